//! Guard for the network-safety rule: the suite runs inside the private network namespace that
//! `cargo xtask test` creates (loopback only, multicast routed to lo). Run outside it, this test
//! fails, so no socket, multicast or discovery test can reach a real network unnoticed.

use anyhow::{Context, Result, ensure};

#[test]
fn only_loopback_exists_and_multicast_goes_to_it() -> Result<()> {
    // /proc/net/* shows the reader's own namespace (/sys/class/net shows the mounter's).
    let dev = std::fs::read_to_string("/proc/net/dev").context("reading /proc/net/dev")?;
    let mut interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    interfaces.sort_unstable();
    ensure!(
        interfaces == ["lo"],
        "network interfaces {interfaces:?}: run the suite with `cargo xtask test`, which runs it \
         in a private network namespace"
    );
    let link = std::process::Command::new("ip")
        .args(["-o", "link", "show", "lo"])
        .output()
        .context("running `ip` (iproute2)")?;
    let link = String::from_utf8_lossy(&link.stdout);
    let flags = link
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').collect::<Vec<_>>())
        .unwrap_or_default();
    ensure!(flags.contains(&"UP"), "lo is down: {link}");
    ensure!(flags.contains(&"MULTICAST"), "lo has no multicast: {link}");
    // 224.0.0.0/4 routed to lo: /proc/net/route lists it as destination 000000E0, mask 000000F0.
    let routes = std::fs::read_to_string("/proc/net/route")?;
    ensure!(
        routes.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 7 && f[0] == "lo" && f[1] == "000000E0" && f[7] == "000000F0"
        }),
        "no 224.0.0.0/4 route on lo:\n{routes}"
    );
    Ok(())
}
