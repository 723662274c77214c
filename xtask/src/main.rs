//! `cargo xtask`: Lockstep's build, install, run, test and bench commands.
//!
//! | command | what it does |
//! |---|---|
//! | `bundle <pkg> [--release]` | nice-plug-xtask bundling into `target/bundled/` |
//! | `bundle <pkg> --release --target T` | cross-built bundles into `target/bundled-T/` (checked for Windows) |
//! | `install [--dest DIR] [--force]` | release bundles into the platform's plug-in folders |
//! | `run [-- FLAGS]` | build what is missing, then the headless runner (README's run command) |
//! | `test [--no-install]` | install peers, lint, build, run the suite in a private netns |
//! | `bench` | criterion benchmarks, one table, `target/lockstep-bench.json` |

mod bench;
mod build;
mod install;
mod platforms;
mod run;
mod test;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

  bundle <package> [--release]   bundle a plugin (nice-plug-xtask)
  bundle <package> --release --target TRIPLE
                                 cross-build (Windows from Linux: target/bundled-TRIPLE/)
  install [--dest DIR] [--force] build release bundles and install them
  run [-- FLAGS]                 run Lockstep headless (`cargo xtask run -- --help`)
  test [--no-install]            everything CI runs
  bench                          benchmarks: table + target/lockstep-bench.json
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        print!("{USAGE}");
        bail!("missing command");
    };
    let rest: Vec<String> = args.collect();
    build::chdir_workspace_root()?;
    match command.as_str() {
        "bundle" if rest.iter().any(|a| a == "--target") => platforms::bundle_command(&rest),
        "bundle" | "bundle-universal" | "known-packages" => nice_plug_xtask::main_with_args(
            "cargo xtask",
            std::iter::once(command.clone()).chain(rest),
        ),
        "install" => install::main(&rest),
        "run" => run::main(&rest),
        "test" => test::main(&rest),
        "bench" => bench::main(&rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}
