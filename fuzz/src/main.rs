//! `ioasis-fuzz`: runs a fuzz target. `ioasis-fuzz --list`; `ioasis-fuzz TARGET [--cases N]
//! [--seed S]`. Exit 0 when no case failed; 1 with the failing input written to
//! `fuzz/crashes/TARGET-SEED.bin`; 2 on bad usage.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args[0] == "--list" || args[0] == "--help" {
        for t in ioasis_fuzz::TARGETS {
            println!("{:<16} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let Some(target) = ioasis_fuzz::target(&args[0]) else {
        eprintln!("error: no target `{}` (see --list)", args[0]);
        return ExitCode::from(2);
    };
    let (mut cases, mut seed) = (1_000_000u64, 0u64);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let v = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--cases", Some(v)) => cases = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("error: usage: ioasis-fuzz TARGET [--cases N] [--seed S]");
                return ExitCode::from(2);
            }
        }
    }
    let seeds = (target.seeds)();
    let r = ioasis_fuzz::engine::run(&seeds, cases, seed, target.one);
    println!(
        "{}: {} cases in {:.1} s ({:.0}/s), {} accepted, seed {seed}: {}",
        target.name,
        r.cases,
        r.seconds,
        r.cases as f64 / r.seconds.max(1e-9),
        r.accepted,
        if r.failure.is_some() { "FAILED" } else { "no failure" }
    );
    match r.failure {
        None => ExitCode::SUCCESS,
        Some((input, msg)) => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
            let file = dir.join(format!("{}-{seed}.bin", target.name));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
            println!("panic: {msg}");
            match saved {
                Ok(()) => println!("input: {}", file.display()),
                Err(e) => println!("input not saved ({e}): {:?}", String::from_utf8_lossy(&input)),
            }
            ExitCode::from(1)
        }
    }
}
