fn main() {
    eprintln!("okome-bench: filled by the benchmark issue");
}
