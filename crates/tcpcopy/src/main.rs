fn main() {
    println!("tcpcopy: not built yet");
}
