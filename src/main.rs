//! The `plait` binary: arguments, config, tracing, the listener and signals.

use std::{io::IsTerminal, path::PathBuf};

use clap::{Parser, Subcommand};
use plait::{Config, Services};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// A Matrix homeserver.
#[derive(Parser)]
#[command(version, about, after_help = defaults_help())]
struct Args {
    /// TOML configuration file (see docs/config.example.toml); without one, the defaults below
    /// apply.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Subcommand)]
enum Command {
    /// Restores a backup (a folder that `server backup create` made in `backup_path`) into
    /// DATABASE_PATH, which must be missing or an empty folder; start the server on it after.
    /// Nothing is changed when it fails.
    Restore {
        /// The backup folder, such as ./data-backups/backup-1700000000000.
        backup: PathBuf,
        /// The new database folder.
        database_path: PathBuf,
    },
    /// Runs an admin command (`users list`, `server stats`, `help`; see docs/admin_api.md) on
    /// the running server through its control socket in the database folder, and prints the
    /// reply.
    Admin {
        /// The command's words, as after `!admin` in the admin room.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

/// `plait restore`: checks the backup, copies it into place and checks the copy.
fn restore(backup: &std::path::Path, database_path: &std::path::Path) -> ! {
    match plait::store::restore_backup(backup, database_path) {
        Ok(check) => {
            println!(
                "plait: restored {} into {target} ({} trees, {} entries read back); start the \
                 server with database_path = \"{target}\"",
                backup.display(),
                check.trees,
                check.entries,
                target = database_path.display(),
            );
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!("plait: restore failed, nothing was changed: {error}");
            std::process::exit(1);
        }
    }
}

/// What a first run without a config file does, and how to change it; the values come from
/// `Config::default`, so the help cannot drift from the code.
fn defaults_help() -> String {
    let defaults = Config::default();
    format!(
        "Without --config, Plait serves the client API for server name `{}` on http://{}, \
         stores its database in {}, and does not federate.\n\n\
         Every config key can also be set with an environment variable named {prefix}<KEY> \
         (upper case), which overrides the file: for example {prefix}SERVER_NAME=example.org, \
         {prefix}LISTEN=0.0.0.0:8008, {prefix}DATABASE_PATH=/var/lib/plait.\n\n\
         Every key, with its default and meaning, is in docs/config.example.toml in the \
         source tree.",
        defaults.server_name,
        defaults.listen,
        defaults.database_path.display(),
        prefix = plait::config::ENV_PREFIX,
    )
}

/// Pins glibc's mmap threshold so that large short-lived buffers (argon2 uses 19 MiB per password
/// hash) go back to the OS when freed. Left dynamic, glibc raises the threshold after the first
/// such free and keeps the buffers in per-thread arenas, which showed as ~190 MiB idle RSS.
/// The arenas are left at glibc's default (eight per core): capped at one per core, the server's
/// threads queued for them and the load benchmark sent half as many events per second (331
/// against 626, one sitting) for no measurable saving in idle memory.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() {
    let args = Args::parse();
    if let Some(Command::Restore {
        backup,
        database_path,
    }) = &args.command
    {
        restore(backup, database_path);
    }
    if let Some(Command::Admin { words }) = &args.command {
        std::process::exit(admin(args.config.as_deref(), words));
    }
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime starts")
        .block_on(serve(args));
}

/// `plait admin ...`: sends the words to the running server's control socket (found through the
/// same config as the server's) and prints the reply; the exit status.
fn admin(config: Option<&std::path::Path>, words: &[String]) -> i32 {
    use std::io::{Read, Write};
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("plait: {message}");
            return 2;
        }
    };
    let path = plait::service::admin::control::socket_path(&config);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!(
                "plait: cannot reach the running server at {}: {error}",
                path.display()
            );
            return 1;
        }
    };
    let mut line = serde_json::to_string(words).expect("a list of strings is JSON");
    line.push('\n');
    let mut reply = String::new();
    if let Err(error) = stream
        .write_all(line.as_bytes())
        .and_then(|()| stream.read_to_string(&mut reply))
    {
        eprintln!("plait: the control socket failed: {error}");
        return 1;
    }
    print!("{reply}");
    0
}

async fn serve(args: Args) {
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("plait: {message}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    // Colour only for a terminal: a log file or pipe would otherwise carry escape codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    // The database is opened before anything is announced, so that a second instance on the
    // same database (whose lock RocksDB refuses) stops with one plain message.
    let services = match Services::build(std::sync::Arc::new(config)) {
        Ok(services) => services,
        Err(error) => {
            eprintln!("plait: {error}");
            std::process::exit(1);
        }
    };
    let config = &services.config;
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("plait: cannot listen on {}: {error}", config.listen);
            std::process::exit(2);
        }
    };
    let federation = match config.federation_listen {
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("plait: cannot listen on {address} (federation): {error}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    // The handlers are installed before the server announces itself, so that a signal sent as
    // soon as it has (by a script or a test) shuts it down cleanly rather than killing it.
    let mut interrupt = signal(SignalKind::interrupt()).unwrap();
    let mut terminate = signal(SignalKind::terminate()).unwrap();
    let address = listener.local_addr().unwrap();
    println!(
        "plait: serving {} on http://{address} (database {})",
        config.server_name,
        config.database_path.display()
    );
    println!("plait: point a Matrix client at homeserver URL http://{address}");
    if let Some(federation) = &federation {
        println!(
            "plait: federation (TLS) on https://{}",
            federation.local_addr().unwrap()
        );
    }
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down");
    };
    if let Err(error) = plait::serve(
        plait::Listeners {
            client: listener,
            federation,
        },
        services,
        shutdown,
    )
    .await
    {
        eprintln!("plait: {error}");
        std::process::exit(1);
    }
}
