//! scripts/main-job.sh and its helpers: relative --plugin paths are the user's, not the
//! repository root's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A fresh directory to run the scripts from (not the repository).
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ioasis-scripts-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// Runs `script` with bash from `cwd`, `$0` being `zero`, with `args`; its stdout, one line a
/// value.
fn bash(cwd: &Path, script: &str, zero: &Path, args: &[&str]) -> Vec<String> {
    let o =
        Command::new("bash").arg("-c").arg(script).arg(zero).args(args).current_dir(cwd).output().expect("bash runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

#[test]
fn abs_plugin_args_makes_plugin_paths_absolute_against_the_callers_directory() {
    let cwd = scratch("helper");
    let lib = root().join("scripts/lib/abs-args.sh");
    let script = format!(r#"source '{}'; abs_plugin_args "$@"; printf '%s\n' "${{ABS_ARGS[@]}}""#, lib.display());
    let args = [
        "--plugin",
        "../x.so",
        "--plugin=libx.so",
        "--plugin",
        "acme-old=old/liby.so",
        "--plugin=acme-z=../z.so",
        "--plugin",
        "/abs/libw.so",
        "--plugin-dir",
        "plugins",
        "--plugin-dir=../more",
        "--filter",
        "map-unmap",
        "--plugin",
        "./a=b.so",
        "--",
        "--plugin",
        "kept.so",
    ];
    let c = cwd.display();
    let expected = [
        "--plugin".to_string(),
        format!("{c}/../x.so"),
        format!("--plugin={c}/libx.so"),
        "--plugin".to_string(),
        format!("acme-old={c}/old/liby.so"),
        format!("--plugin=acme-z={c}/../z.so"),
        "--plugin".to_string(),
        "/abs/libw.so".to_string(),
        "--plugin-dir".to_string(),
        format!("{c}/plugins"),
        format!("--plugin-dir={c}/../more"),
        "--filter".to_string(),
        "map-unmap".to_string(),
        "--plugin".to_string(),
        format!("{c}/./a=b.so"),
        "--".to_string(),
        "--plugin".to_string(),
        "kept.so".to_string(),
    ];
    assert_eq!(bash(&cwd, &script, &lib, &args), expected);
    // No argument at all: none out (and no error under `set -u`).
    let script = format!(
        r#"set -u; source '{}'; abs_plugin_args; set -- ${{ABS_ARGS[@]+"${{ABS_ARGS[@]}}"}}; echo "$#""#,
        lib.display()
    );
    assert_eq!(bash(&cwd, &script, &lib, &[]), ["0"]);
    std::fs::remove_dir_all(&cwd).unwrap();
}

/// The head of main-job.sh, up to its `cd` to the repository root, run from another directory:
/// the arguments it goes on with name the caller's files.
#[test]
fn main_job_resolves_plugin_paths_before_it_changes_directory() {
    let cwd = scratch("main-job");
    let job = root().join("scripts/main-job.sh");
    let text = std::fs::read_to_string(&job).unwrap();
    let cd = text.lines().position(|l| l.starts_with("cd ")).expect("main-job.sh changes directory");
    let head: Vec<&str> = text.lines().take(cd + 1).collect();
    let script = format!("{}\nprintf '%s\\n' \"$@\" \"$PWD\"", head.join("\n"));
    let out = bash(&cwd, &script, &job, &["--plugin", "../vendor/libacme.so", "--plugin-dir=d", "--seed", "3"]);
    let c = cwd.display();
    assert_eq!(
        out,
        [
            "--plugin".to_string(),
            format!("{c}/../vendor/libacme.so"),
            format!("--plugin-dir={c}/d"),
            "--seed".to_string(),
            "3".to_string(),
            root().canonicalize().unwrap().display().to_string(),
        ]
    );
    std::fs::remove_dir_all(&cwd).unwrap();
}
