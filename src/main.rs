fn main() -> std::process::ExitCode {
    pgcutover::cli::main()
}
