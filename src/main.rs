//! The `plait` binary: arguments, config, tracing, the listener and signals.

use std::path::PathBuf;

use clap::Parser;
use plait::Config;
use tracing_subscriber::EnvFilter;

/// A Matrix homeserver.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; `PLAIT_*` environment variables override single keys.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Pins glibc's mmap threshold so that large short-lived buffers (argon2 uses 19 MiB per password
/// hash) go back to the OS when freed. Left dynamic, glibc raises the threshold after the first
/// such free and keeps the buffers in per-thread arenas, which showed as ~190 MiB idle RSS.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime starts")
        .block_on(serve());
}

async fn serve() {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("plait: {message}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    tracing_subscriber::fmt().with_env_filter(filter).init();
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
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    if let Err(error) = plait::run(
        plait::Listeners {
            client: listener,
            federation,
        },
        config,
        shutdown,
    )
    .await
    {
        eprintln!("plait: {error}");
        std::process::exit(1);
    }
}
