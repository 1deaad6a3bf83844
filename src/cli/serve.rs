use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use ferrovision::serve::predict;
use ferrovision::serve::server::{self, ServeOptions};

use super::args::{LanguageArgs, ModelArgs};
use ferrovision::outln;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Class table: TSV with index/wnid/name columns, or one class name per line.
    #[arg(long)]
    classes: Option<std::path::PathBuf>,
    #[command(flatten)]
    language: LanguageArgs,
    /// Address to listen on; 0.0.0.0 opens the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Images per forward pass at most (dynamic batching); 1 turns batching off.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Milliseconds the first image of a batch waits for more.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Images waiting for inference at most; more are answered 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest upload, in megabytes (413 above).
    #[arg(long, default_value_t = 10)]
    max_upload_mb: usize,
    /// Largest image, in megapixels, read from its header before decoding (413 above).
    #[arg(long, default_value_t = 40)]
    max_megapixels: u64,
    /// Seconds allowed to send a request's body (408 after).
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
    /// Seconds allowed to send a request's head (the connection is closed after); also how long
    /// an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 30)]
    header_timeout_s: u64,
}

impl ServeArgs {
    pub fn run(self) -> Result<()> {
        let ServeArgs {
            model,
            classes,
            language,
            host,
            port,
            max_batch,
            max_wait_ms,
            queue,
            max_upload_mb,
            max_megapixels,
            timeout_s,
            header_timeout_s,
        } = self;
        let translations = language.translations()?;
        let device = model.device.parse()?;
        let table = classes.as_deref().map(ferrovision::data::classes::ClassNames::read).transpose()?;
        let (predictor, classes) = predict::load_predictor(&model.source()?, table, &device)?;
        let options = ServeOptions {
            addr: SocketAddr::new(host, port),
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            queue,
            max_upload: max_upload_mb * 1024 * 1024,
            max_pixels: max_megapixels * 1_000_000,
            request_timeout: Duration::from_secs(timeout_s),
            header_timeout: Duration::from_secs(header_timeout_s),
            lang: language.lang,
        };
        let running = server::spawn(predictor, classes, translations, options)?;
        // Tests and scripts read the address from this line (with --port 0).
        outln!("listening on http://{}", running.addr);
        running.wait()
    }
}
