//! `examples/jobs_reader.rs` as a binary of this crate, so that
//! `tests/examples.rs` finds it through `CARGO_BIN_EXE_jobs_reader`.

#[path = "../../../examples/jobs_reader.rs"]
mod example;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example::main()
}
