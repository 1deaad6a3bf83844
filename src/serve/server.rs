//! `ferrovision serve`: an HTTP API and a web page for a model. Requests are decoded on the
//! runtime's blocking pool and queued (bounded: a full queue answers 503) for one inference
//! thread, which batches them dynamically: it takes what has arrived, up to `max_batch` images,
//! waiting at most `max_wait` after the first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::predict::{DecodeError, Prediction, Predictor, Scores, decode_image};
use super::translate::{LANGUAGES, Translations};
use crate::augment::Image;
use crate::data::classes::ClassNames;

const PAGE: &str = include_str!("page/index.html");
const OPENAPI: &str = include_str!("page/openapi.json");

/// Limits and batching of the server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Images per forward pass at most; 1 turns batching off.
    pub max_batch: usize,
    /// How long the first image of a batch waits for others.
    pub max_wait: Duration,
    /// Images waiting for inference at most; more are answered 503.
    pub queue: usize,
    /// Largest request body, in bytes (413 above).
    pub max_upload: usize,
    /// Largest image, in pixels (width x height), checked from the header.
    pub max_pixels: u64,
    /// Time allowed to send a request's body (408 after).
    pub request_timeout: Duration,
    /// Time allowed to send a request's head; also how long an idle kept-alive connection stays
    /// open (hyper's header read timeout starts when it waits for a head).
    pub header_timeout: Duration,
    /// Language of the labels when a request names none.
    pub lang: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: 16,
            max_wait: Duration::from_millis(5),
            queue: 64,
            max_upload: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            request_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            lang: "en".into(),
        }
    }
}

/// One image waiting for inference, and where its answer goes.
struct Job {
    image: Image,
    top_k: usize,
    reply: oneshot::Sender<Prediction>,
}

/// What the handlers share.
struct App {
    classes: ClassNames,
    translations: Translations,
    options: ServeOptions,
    /// The model card as `GET /v1/model` answers it, less the live counters.
    card: Value,
    architecture: String,
    queue: SyncSender<Job>,
    images: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

/// A server running on its own threads.
pub struct Server {
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Server {
    /// Blocks while the server runs (until its listener fails).
    pub fn wait(self) -> Result<()> {
        self.thread.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?
    }
}

/// Starts serving `predictor` on `options.addr` (port 0: a free port, see [`Server::addr`]).
pub fn spawn(predictor: Predictor, classes: ClassNames, translations: Translations, options: ServeOptions) -> Result<Server> {
    translations.check(&options.lang)?;
    let listener = std::net::TcpListener::bind(options.addr).with_context(|| format!("cannot listen on {}", options.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let card = model_card(&predictor, &classes, &translations, &options);
    let architecture = predictor.card.architecture.clone();
    let (queue, jobs) = sync_channel(options.queue.max(1));
    let (images, batches) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counters = (images.clone(), batches.clone());
    let (max_batch, max_wait) = (options.max_batch.max(1), options.max_wait);
    std::thread::Builder::new().name("inference".into()).spawn(move || run_batches(&predictor, &jobs, max_batch, max_wait, &counters))?;
    let header_timeout = options.header_timeout;
    let app = Arc::new(App { classes, translations, options, card, architecture, queue, images, batches });
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/v1/model", get(model))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/predict", post(predict))
        // The body is read (with its own limit and timeout) by the handler.
        .layer(DefaultBodyLimit::disable())
        .with_state(app);
    let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.block_on(accept(listener, router, header_timeout));
        Ok(())
    })?;
    Ok(Server { addr, thread })
}

/// Serves each connection on its own task, with `header_timeout` to send a request's head.
async fn accept(listener: tokio::net::TcpListener, router: Router, header_timeout: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: wait for some to close rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            // A connection that fails (a client gone, a head too slow) ends alone.
            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

/// The inference thread: batches of what has arrived, until every sender is gone.
fn run_batches(
    predictor: &Predictor,
    jobs: &Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
    counters: &(Arc<AtomicU64>, Arc<AtomicU64>),
) {
    while let Ok(first) = jobs.recv() {
        let deadline = Instant::now() + max_wait;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let k = batch.iter().map(|j| j.top_k).max().unwrap_or(1);
        let (images, replies): (Vec<Image>, Vec<_>) = batch.into_iter().map(|j| (j.image, (j.top_k, j.reply))).unzip();
        let predictions = predictor.predict(&images, k, images.len(), Scores::Prob);
        counters.0.fetch_add(images.len() as u64, Ordering::Relaxed);
        counters.1.fetch_add(1, Ordering::Relaxed);
        for ((top_k, reply), mut prediction) in replies.into_iter().zip(predictions) {
            prediction.top.truncate(top_k);
            // The client may have gone (timed out); nothing to do then.
            let _ = reply.send(prediction);
        }
    }
}

fn model_card(predictor: &Predictor, classes: &ClassNames, translations: &Translations, options: &ServeOptions) -> Value {
    let languages: Vec<Value> = translations
        .languages()
        .into_iter()
        .map(|code| {
            let name = match code.as_str() {
                "en" => "English",
                code => LANGUAGES.iter().find(|l| l.code == code).map_or(code, |l| l.name),
            };
            let coverage = translations.coverage(&code, classes);
            json!({"code": code, "name": name, "translated": coverage.translated, "classes": coverage.total})
        })
        .collect();
    let class_list: Vec<Value> =
        classes.ids.iter().zip(&classes.names).enumerate().map(|(i, (id, name))| json!({"index": i, "id": id, "name": name})).collect();
    json!({
        "architecture": predictor.card.architecture,
        "weights": predictor.card.weights,
        "accuracy": predictor.card.accuracy,
        "num_classes": classes.len(),
        "input_size": predictor.resize.crop_size,
        "resize_size": predictor.resize.resize_size,
        "default_lang": options.lang,
        "languages": languages,
        "classes": class_list,
        "limits": {
            "max_upload_bytes": options.max_upload,
            "max_pixels": options.max_pixels,
            "request_timeout_ms": options.request_timeout.as_millis() as u64,
        },
        "batching": {"max_batch": options.max_batch, "max_wait_ms": options.max_wait.as_secs_f64() * 1e3, "queue": options.queue},
    })
}

async fn model(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let mut card = app.card.clone();
    card["batching"]["images"] = json!(app.images.load(Ordering::Relaxed));
    card["batching"]["batches"] = json!(app.batches.load(Ordering::Relaxed));
    axum::Json(card)
}

/// An answer with a JSON body `{error, ...}`.
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, body: json!({"error": message.into()}) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

#[derive(serde::Deserialize)]
struct PredictQuery {
    top_k: Option<String>,
    lang: Option<String>,
}

async fn predict(
    State(app): State<Arc<App>>,
    query: Result<Query<PredictQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let started = Instant::now();
    match answer(&app, query, request).await {
        Ok(mut body) => {
            body["elapsed_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
            axum::Json(body).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn answer(
    app: &App,
    query: Result<Query<PredictQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Value, ApiError> {
    // The body is read before the parameters are checked: a client still sending it would
    // otherwise see its connection closed instead of the answer.
    let bytes = tokio::time::timeout(app.options.request_timeout, read_upload(request, app.options.max_upload)).await.map_err(|_| {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request was not sent within {:?}", app.options.request_timeout))
    })??;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let lang = query.lang.unwrap_or_else(|| app.options.lang.clone());
    if let Err(unknown) = app.translations.check(&lang) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": unknown.to_string(), "available": unknown.available}),
        });
    }
    let top_k = match query.top_k.as_deref().map(str::parse::<usize>) {
        None => 5.min(app.classes.len()),
        Some(Ok(k)) if (1..=app.classes.len()).contains(&k) => k,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("top_k must be a number from 1 to {}", app.classes.len()))),
    };
    let max_pixels = app.options.max_pixels;
    let decoded = tokio::task::spawn_blocking(move || decode_image(&bytes, max_pixels))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"))?;
    let image = decoded.map_err(|e| {
        let status = match e {
            DecodeError::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DecodeError::TooManyPixels { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            DecodeError::Corrupt { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    })?;
    let (reply, answer) = oneshot::channel();
    app.queue.try_send(Job { image, top_k, reply }).map_err(|e| match e {
        TrySendError::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: too many images waiting; try again"),
        TrySendError::Disconnected(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the inference thread stopped"),
    })?;
    let prediction = answer.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the inference thread stopped"))?;
    Ok(json!({
        "predictions": prediction.to_json(&app.classes, &app.translations, &lang, Scores::Prob),
        "model": app.architecture,
        "lang": lang,
    }))
}

/// The image bytes of a request: the first file of a multipart form, or the whole body.
async fn read_upload(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the upload is larger than {limit} bytes"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    // A multipart form carries a little more than its file.
    let room = limit + 64 * 1024;
    let oversized = declared.is_some_and(|n| n > room);
    let (parts, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    // An oversized body is read on (and dropped) up to a bound before the answer, so that a
    // client that sends it all before reading (most do) gets the 413 rather than a reset.
    let drain_bound = room.saturating_mul(8);
    let mut seen = 0usize;
    while seen <= drain_bound {
        let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await else { break };
        let frame = frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request: {e}")))?;
        let Some(data) = frame.data_ref() else { continue };
        seen += data.len();
        if seen <= room && !oversized {
            bytes.extend_from_slice(data);
        }
    }
    if seen > room || oversized {
        return Err(too_large());
    }
    let bytes = Bytes::from(bytes);
    let is_multipart =
        parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("multipart/form-data"));
    if !is_multipart {
        return if bytes.len() > limit { Err(too_large()) } else { Ok(bytes) };
    }
    let mut form = Multipart::from_request(Request::from_parts(parts, Body::from(bytes)), &())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    while let Some(field) = form.next_field().await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))? {
        if field.file_name().is_some() || matches!(field.name(), Some("image" | "file")) {
            let bytes = field.bytes().await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
            return if bytes.len() > limit { Err(too_large()) } else { Ok(bytes) };
        }
    }
    Err(ApiError::new(StatusCode::BAD_REQUEST, "the form has no file (send it as the field `image`)"))
}
