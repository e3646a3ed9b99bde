//! Link settings that keep the server's resident memory small (see "Idle memory" in
//! docs/performance.md).
//!
//! With `ROCKSDB_STATIC` (set in `.cargo/config.toml`), librocksdb-sys links Debian's
//! `librocksdb.a` instead of the shared library, and this script links what the archive needs
//! from archives too: the compression libraries and the C++ runtime. Only the objects in use are
//! linked, and the shared libraries' dynamic symbol tables and relocations (2.4 MiB for
//! RocksDB, 0.6 MiB for the C++ runtime) are no longer mapped and read at start-up.
//! `-z pack-relative-relocs` stores the binary's own relative relocations compactly (0.9 MiB of
//! `.rela.dyn` becomes a few KiB for the loader to read; glibc 2.36 or newer), and
//! `-z keep-text-section-prefix` keeps start-up and cold C++ code in sections of their own
//! rather than spread between the code that runs.

use std::{env, path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    println!("cargo:rerun-if-env-changed=CXX");
    let linux_gnu = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
        println!("cargo:rustc-link-arg=-Wl,-z,keep-text-section-prefix");
    }
    if env::var_os("ROCKSDB_STATIC").is_some() {
        let static_cxx = link_cxx_runtime_from_its_archive();
        for library in ["snappy", "lz4", "zstd", "z", "bz2"] {
            println!("cargo:rustc-link-arg=-l:lib{library}.a");
        }
        // Snappy is C++: the runtime again after it, for what RocksDB did not already pull in.
        if static_cxx {
            println!("cargo:rustc-link-arg=-lstdc++");
        }
    }
}

/// librocksdb-sys asks the linker for `-lstdc++`. A folder searched before the compiler's own
/// that holds only `libstdc++.a` makes the linker take the archive. Without the archive (or a
/// compiler that names it) the shared runtime is linked as before.
fn link_cxx_runtime_from_its_archive() -> bool {
    let compiler = env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let Ok(output) = Command::new(compiler)
        .arg("-print-file-name=libstdc++.a")
        .output()
    else {
        return false;
    };
    let archive = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // An unknown file name is printed back bare, without a folder.
    if !Path::new(&archive).is_absolute() || !Path::new(&archive).exists() {
        return false;
    }
    let out_dir = env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let link = Path::new(&out_dir).join("libstdc++.a");
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&archive, &link).is_err() {
        return false;
    }
    println!("cargo:rustc-link-search=native={out_dir}");
    true
}
