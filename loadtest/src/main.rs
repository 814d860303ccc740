//! The wsedge load-test tool. Not built yet: issue 5 fills it in (SPEC §8).
fn main() {
    eprintln!("wsedge-loadtest: not built yet (see SPEC §8); this stub only reserves the crate");
    std::process::exit(2);
}
