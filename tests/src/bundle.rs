//! Where `cargo xtask bundle` puts the built plugin.

use std::path::PathBuf;

/// Which build of the bundle to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `target/bundled/Lockstep.clap`: optimised, what users install.
    Release,
    /// `target/bundled-debug/Lockstep.clap`: debug build with `assert_process_allocs`, so an
    /// allocation inside `process()` aborts the process.
    DebugAllocChecked,
}

impl Build {
    /// Both builds, in the order the tests run them.
    pub const ALL: [Build; 2] = [Build::Release, Build::DebugAllocChecked];

    /// Path of the `.clap` file of this build. `LOCKSTEP_TARGET_DIR` overrides the target
    /// directory (the tests run from a namespace where only built files are available).
    pub fn clap_path(self) -> PathBuf {
        let dir = match self {
            Build::Release => "bundled",
            Build::DebugAllocChecked => "bundled-debug",
        };
        target_dir().join(dir).join("Lockstep.clap")
    }

    /// Path of the `.vst3` bundle folder of this build.
    pub fn vst3_path(self) -> PathBuf {
        self.clap_path().with_extension("vst3")
    }
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // tests/ is one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}
