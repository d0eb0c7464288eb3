fn main() {
    println!("intercept: not built yet");
}
