use intercept::cli;

fn main() {
    match cli::parse(std::env::args_os()) {
        Ok(cfg) => println!("{cfg:?}"),
        Err(e) => {
            println!("{}", e.message);
            std::process::exit(e.status);
        }
    }
}
