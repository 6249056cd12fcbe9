fn main() {
    eprintln!("bootstrap: not yet");
}
