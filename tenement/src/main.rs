fn main() -> std::process::ExitCode {
    tenement::cli::main()
}
