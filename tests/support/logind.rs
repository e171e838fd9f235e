//! A stand-in for systemd-logind on a private D-Bus: a `dbus-daemon` of the
//! test's own (Debian's dbus-daemon) and an `org.freedesktop.login1.Manager`
//! that hands out inhibitor locks (the read end of a pipe stays here: when
//! every holder has closed its end, the lock is released) and emits
//! `PrepareForShutdown`. nodelet finds it through DBUS_SYSTEM_BUS_ADDRESS,
//! and talks to it exactly as to logind.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Login1 {
    /// Our ends of the locks handed out, with who asked and the mode.
    locks: Arc<Mutex<Vec<(OwnedFd, String, String)>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Login1 {
    fn inhibit(&self, what: &str, who: &str, _why: &str, mode: &str) -> zbus::zvariant::OwnedFd {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        nix::fcntl::fcntl(read.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("nonblocking");
        self.locks.lock().unwrap().push((read, format!("{what}/{who}"), mode.to_string()));
        write.into()
    }

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> u64 {
        30_000_000
    }

    #[zbus(signal)]
    async fn prepare_for_shutdown(emitter: &zbus::object_server::SignalEmitter<'_>, start: bool) -> zbus::Result<()>;
}

pub struct FakeLogind {
    daemon: Child,
    pub address: String,
    conn: zbus::Connection,
    locks: Arc<Mutex<Vec<(OwnedFd, String, String)>>>,
}

impl FakeLogind {
    pub async fn start(dir: &Path) -> FakeLogind {
        let sock = dir.join("system_bus_socket");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  <type>custom</type>\n  \
                 <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n  <policy context=\"default\">\n    \
                 <allow user=\"*\"/>\n    <allow own=\"*\"/>\n    <allow send_destination=\"*\"/>\n    <allow receive_sender=\"*\"/>\n  \
                 </policy>\n</busconfig>\n",
                sock.display()
            ),
        )
        .unwrap();
        let daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (apt-get install dbus-daemon)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let address = format!("unix:path={}", sock.display());
        let locks = Arc::new(Mutex::new(Vec::new()));
        let conn = zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.freedesktop.login1")
            .unwrap()
            .serve_at("/org/freedesktop/login1", Login1 { locks: locks.clone() })
            .unwrap()
            .build()
            .await
            .expect("the fake logind on the private bus");
        FakeLogind { daemon, address, conn, locks }
    }

    /// Inhibitor locks still held: (what/who, mode).
    pub fn held(&self) -> Vec<(String, String)> {
        let mut locks = self.locks.lock().unwrap();
        // A lock whose every writer is closed reads end-of-file: released.
        locks.retain(|(fd, _, _)| {
            let mut b = [0u8; 1];
            !matches!(nix::unistd::read(fd, &mut b), Ok(0))
        });
        locks.iter().map(|(_, w, m)| (w.clone(), m.clone())).collect()
    }

    pub async fn prepare_for_shutdown(&self, start: bool) {
        let iface = self.conn.object_server().interface::<_, Login1>("/org/freedesktop/login1").await.unwrap();
        Login1::prepare_for_shutdown(iface.signal_emitter(), start).await.unwrap();
    }
}

impl Drop for FakeLogind {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
