//! The `shmproc` command: `bench` (the default), `ls`, `gc`.

#[allow(dead_code)] // until the runner lands
mod bench;

fn main() {
    shmproc::init();
    let cases = bench::all_cases();
    println!("shmproc bench: {} cases registered (runner under construction)", cases.len());
}
