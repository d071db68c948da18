//! `weft-cni`: reads the call a container runtime makes, has the node's agent answer it, and
//! prints the answer (see the library's documentation).

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let error = weft_cni::CniError::new(weft_cni::code::IO_FAILURE, format!("cannot read stdin: {e}"));
        let _ = std::io::stdout().write_all(&error.to_json());
        return ExitCode::FAILURE;
    }
    let outcome = weft_cni::shim::run(|name| std::env::var(name).ok(), &stdin);
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&outcome.stdout).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    if outcome.success { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
