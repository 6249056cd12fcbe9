fn main() {
    eprintln!("amiflow: not yet");
}
