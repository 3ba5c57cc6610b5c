//! Headless Chromium for browser tests: Debian's `/usr/bin/chromium`, with
//! a profile of its own and the flags this closed network needs; killed
//! (by its PID) when dropped. `.ci/run` installs it; `WSHUB_SKIP_BROWSER=1`
//! skips browser tests on a machine without it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Browser {
    pub child: Child,
    profile: PathBuf,
    /// The DevTools port, when started with `devtools`.
    pub devtools_port: Option<u16>,
}

/// False (and the test should return) only when `WSHUB_SKIP_BROWSER` is set
/// and there is no Chromium; without either, the test fails and says why.
pub fn available() -> bool {
    if std::path::Path::new("/usr/bin/chromium").exists() {
        return true;
    }
    assert!(
        std::env::var_os("WSHUB_SKIP_BROWSER").is_some(),
        "browser tests need /usr/bin/chromium (apt-get install chromium), or WSHUB_SKIP_BROWSER=1 to skip them"
    );
    false
}

impl Browser {
    /// Opens `url`. With `devtools`, also listens for the DevTools protocol
    /// on a free loopback port (read from Chromium's own announcement).
    pub fn open(url: &str, name: &str, devtools: bool) -> Browser {
        Browser::open_with(url, name, devtools, &[])
    }

    /// `open` with extra command-line flags.
    pub fn open_with(url: &str, name: &str, devtools: bool, flags: &[&str]) -> Browser {
        let profile = std::env::temp_dir().join(format!("wshub-chromium-{}-{name}", std::process::id()));
        let mut command = Command::new("/usr/bin/chromium");
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=900,700",
        ]);
        command.arg(format!("--user-data-dir={}", profile.display())).args(flags);
        if devtools {
            command.arg("--remote-debugging-port=0");
        }
        command.arg(url).stdout(Stdio::null()).stderr(if devtools { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().expect("start chromium");
        let mut devtools_port = None;
        if devtools {
            let stderr = child.stderr.take().unwrap();
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    devtools_port = rest.split('/').next().and_then(|p| p.parse().ok());
                    break;
                }
            }
            assert!(devtools_port.is_some(), "Chromium did not announce its DevTools port");
            // Keep draining its stderr so it never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
        }
        Browser { child, profile, devtools_port }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
