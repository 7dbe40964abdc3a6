//! `examples/jobs_writer.rs` as a binary of this crate, so that
//! `tests/examples.rs` finds it through `CARGO_BIN_EXE_jobs_writer`.

#[path = "../../../examples/jobs_writer.rs"]
mod example;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example::main()
}
