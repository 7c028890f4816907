//! The crash tests' child processes: the test binary itself, started again to
//! run its ignored `child` test, then killed at a named crash point (eda's
//! `failpoints` feature) or with SIGKILL.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// A command that runs this test binary's `child` test, quietly, with `env`
/// (and no crash point or broken guarantee left from the parent's environment).
pub fn child<K, V>(env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "child", "--test-threads=1"])
        .env_remove("EDA_FAILPOINT")
        .env_remove("EDA_BROKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .envs(env);
    command
}

/// The environment of a child that aborts at crash point `point` the n-th time
/// it gets there, n random in `1..=at_most` for each child.
pub fn crash_at(point: &'static str, at_most: u32) -> impl Fn() -> Vec<(&'static str, String)> {
    move || {
        let after = rand::random::<u32>() % at_most + 1;
        vec![
            ("EDA_FAILPOINT", point.to_owned()),
            ("EDA_FAILPOINT_AFTER", after.to_string()),
        ]
    }
}

/// Runs this test binary's test `name` again, in a child process with the
/// deliberately broken variant `broken` of the guarantee it tests (eda's
/// `failpoints` feature, `EDA_BROKEN`): the control of that test. Whether the
/// test failed there, as it must; its output is in the panic message if not.
pub fn fails_when_broken(name: &str, broken: &str) -> bool {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env_remove("EDA_FAILPOINT")
        .env("EDA_BROKEN", broken)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("running 1 test"),
        "the control did not run `{name}`: {stdout}"
    );
    !output.status.success() && stdout.contains("1 failed")
}
