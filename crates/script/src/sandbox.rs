//! Workers that run executions in QuickJS, in a kept context frozen at creation, and the event
//! loop that connects a script's `db` calls to the caller.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use rquickjs::loader::{Loader, Resolver};
use rquickjs::promise::PromiseState;
use rquickjs::{Context, Ctx, Function, Module, Object, Persistent, Promise, Runtime, Value};
use serde_json::Value as Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compile::Kind;
use crate::convert::{from_js, to_js};
use crate::{CompileError, Execution, Modules, Program, ScriptError};

/// What a running execution tells its caller.
#[derive(Debug)]
pub enum Event {
    /// The script called `db.<op>(...)`; answer with [`HostCall::reply`].
    Call(HostCall),
    /// The execution ended: hooks give their globals, functions their value.
    Done(Result<Json, ScriptError>),
}

/// One `db` call of a script: `op` is the method name, `args` its arguments (a JSON array; a
/// JS `Date` arrives as `{"$date": "<ISO-8601>"}`).
#[derive(Debug)]
pub struct HostCall {
    pub op: String,
    pub args: Json,
    id: u64,
    reply: mpsc::Sender<Reply>,
}

/// Why a host call failed, as the script will see it.
#[derive(Debug, Clone)]
enum Refusal {
    /// Rejects with an `Error`.
    Error(String),
    /// Rejects with a `UserError` (one thrown by a hook further down, say): left uncaught, it
    /// is the request's 400 with exactly this message.
    User(String),
}

type Reply = (u64, Result<Json, Refusal>);

impl HostCall {
    /// Settles the script's promise: `Ok` resolves it with the value, `Err` rejects it with an
    /// `Error` carrying the message.
    pub fn reply(self, result: Result<Json, String>) {
        self.send(result.map_err(Refusal::Error));
    }

    /// Rejects the script's promise with a `UserError` carrying the message.
    pub fn reply_user_error(self, message: String) {
        self.send(Err(Refusal::User(message)));
    }

    fn send(self, result: Result<Json, Refusal>) {
        // The execution may have ended meanwhile (its wall clock ran out): nobody to tell.
        let _ = self.reply.send((self.id, result));
    }
}

/// A started execution: the caller polls [`Running::next`] and serves the calls.
pub struct Running {
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

impl Running {
    pub async fn next(&mut self) -> Event {
        self.events.recv().await.unwrap_or_else(|| {
            Event::Done(Err(ScriptError::Script("the script worker stopped".into())))
        })
    }
}

struct Job {
    exec: Execution,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    reply_tx: mpsc::Sender<Reply>,
    replies: mpsc::Receiver<Reply>,
    /// Held while the job runs: the pool's bound.
    _permit: Option<OwnedSemaphorePermit>,
}

/// A bounded set of worker threads, each with a QuickJS runtime of its own.
pub struct Pool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    size: usize,
    counters: Arc<Counters>,
}

/// Executions by outcome, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    user_error: AtomicU64,
    failed: AtomicU64,
    limit: AtomicU64,
    busy: AtomicU64,
    micros: AtomicU64,
}

/// A snapshot of the pool, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub workers: usize,
    pub running: usize,
    pub ok: u64,
    pub user_errors: u64,
    pub failed: u64,
    /// Of `failed`: stopped by a limit (time, memory, stack).
    pub limits: u64,
    /// Refused with [`ScriptError::Busy`].
    pub busy: u64,
    pub seconds: f64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "script::Pool({} workers)", self.size)
    }
}

/// Executions handed to the workers at once, per worker: one running and one waiting, so a
/// worker that finishes finds its next job at once instead of idling while the caller that was
/// waiting for a permit wakes up and sends it. A waiting job's wall clock starts when it runs.
const QUEUED_PER_WORKER: usize = 2;

/// Thread stack of a worker: well above QuickJS's own stack limit, which is what stops deep
/// recursion.
const THREAD_STACK: usize = 16 << 20;

impl Pool {
    pub fn new(size: usize) -> Pool {
        let size = size.max(1);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        for i in 0..size {
            let rx = rx.clone();
            let counters = counters.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("script-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    let mut worker = Worker::new(counters);
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => worker.run(job),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a script worker");
            }
        }
        Pool {
            jobs,
            permits: Arc::new(Semaphore::new(size * QUEUED_PER_WORKER)),
            size,
            counters,
        }
    }

    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            workers: self.size,
            running: self.busy(),
            ok: get(&c.ok),
            user_errors: get(&c.user_error),
            failed: get(&c.failed),
            limits: get(&c.limit),
            busy: get(&c.busy),
            seconds: get(&c.micros) as f64 / 1e6,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Executions running now (those handed to a worker and waiting for it not counted).
    pub fn busy(&self) -> usize {
        (self.size * QUEUED_PER_WORKER - self.permits.available_permits()).min(self.size)
    }

    /// Starts an execution on a free worker, waiting for one up to the execution's wall-clock
    /// limit ([`ScriptError::Busy`] after that). A `nested` execution (a hook run by a script's
    /// own `db` call, whose caller holds a worker already) runs on a thread of its own instead,
    /// so nesting can never wait for itself.
    pub async fn start(&self, exec: Execution, nested: bool) -> Result<Running, ScriptError> {
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::channel();
        if nested {
            let job = Job {
                exec,
                events,
                reply_tx,
                replies,
                _permit: None,
            };
            std::thread::Builder::new()
                .name("script-nested".into())
                .stack_size(THREAD_STACK)
                .spawn({
                    let counters = self.counters.clone();
                    move || Worker::new(counters).run(job)
                })
                .map_err(|e| ScriptError::Script(format!("cannot start a script thread: {e}")))?;
        } else {
            let wall = exec.limits.wall;
            let permit =
                match tokio::time::timeout(wall, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        return Err(ScriptError::Busy);
                    }
                };
            let job = Job {
                exec,
                events,
                reply_tx,
                replies,
                _permit: Some(permit),
            };
            self.jobs
                .send(job)
                .map_err(|_| ScriptError::Script("the script workers stopped".into()))?;
        }
        Ok(Running { events: events_rx })
    }
}

/// Checks that compiled JavaScript parses in QuickJS (without running it).
pub(crate) fn check_syntax(file: &str, js: &str, kind: Kind) -> Result<(), CompileError> {
    let fail = |message: String| CompileError {
        file: file.to_string(),
        line: 1,
        message,
    };
    let rt = Runtime::new().map_err(|e| fail(e.to_string()))?;
    let ctx = Context::full(&rt).map_err(|e| fail(e.to_string()))?;
    ctx.with(|ctx| {
        let result = match kind {
            Kind::Hook => ctx.eval::<Value, _>(hook_source(js)).map(|_| ()),
            // A module's imports would be loaded to compile it; oxc has parsed it whole already.
            Kind::Module => Ok(()),
        };
        result.map_err(|e| {
            let (name, message, _) = describe(&ctx, &caught(&ctx, e));
            let line = message_line(&message);
            CompileError {
                file: file.to_string(),
                line,
                message: format!("{name}: {message}"),
            }
        })
    })
}

fn message_line(_message: &str) -> usize {
    1
}

/// A hook body as an async function expression; called by the runner.
fn hook_source(body: &str) -> String {
    format!("(async function () {{\n{body}\n}})")
}

/// The globals every execution gets; `host(op, json)` and `log(level, text)` are the only
/// native functions, and they stay hidden in this closure.
const PRELUDE: &str = r#"(function (host, log) {
  "use strict";
  // Made once per context and then reused by many executions: per-execution data lives in
  // `cur` (set by `setup`, cleared by `teardown`), never in anything a script can reach and
  // change. Few function literals on purpose: compiling each costs a few microseconds.
  const g = globalThis;
  const stringify = JSON.stringify, parse = JSON.parse, freeze = Object.freeze;
  let cur = null;
  function UserError(message) {
    const e = new Error(message);
    Object.setPrototypeOf(e, UserError.prototype);
    return e;
  }
  UserError.prototype = Object.create(Error.prototype, {
    constructor: { value: UserError }, name: { value: "UserError" } });
  function replacer(k, v) {
    const o = this[k];
    return o instanceof Date ? { "$date": o.toISOString() } : v;
  }
  function refused(e) {
    if (e && e.user) throw new UserError(e.message);
    throw new Error(e && typeof e === "object" ? e.message : e);
  }
  function Response(r) {
    this.status = r.status; this.ok = r.status >= 200 && r.status < 300;
    this.headers = r.headers; this.body = r.body;
  }
  Response.prototype.text = async function () { return this.body; };
  Response.prototype.json = async function () { return parse(this.body); };
  function method(op) {
    return function () {
      const p = host(op, stringify(Array.prototype.slice.call(arguments), replacer)).then(null, refused);
      return op === "fetch" ? p.then((r) => freeze(new Response(r))) : p;
    };
  }
  const db = {};
  for (const op of ["find", "findOne", "insertOne", "insertMany", "updateOne", "updateMany",
    "deleteOne", "deleteMany", "executeQuery", "queryString", "executeUpdate", "fetch",
    "startWorkflow"]) {
    db[op] = method(op);
  }
  function text(args) {
    let out = "";
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      let s;
      if (typeof a === "string") s = a;
      else { try { s = stringify(a); } catch (e) {} if (s === undefined) s = String(a); }
      out += (i ? " " : "") + s;
    }
    return out;
  }
  function level(name) { return function () { log(name, text(arguments)); }; }
  const Logger = { log: level("info"), info: level("info"), debug: level("debug"),
    warn: level("warn"), error: level("error") };
  const who = ["createdBy", "creationDate", "lastUpdatedBy", "lastUpdateDate", "_rs"];
  const utils = {
    toNewRow(row) {
      const out = {};
      const keys = cur ? cur.keys || [] : [];
      for (const k in row) if (!who.includes(k) && !keys.includes(k)) out[k] = row[k];
      return out;
    },
  };
  const session = {};
  for (const k of ["userName", "orgUid", "appUid", "roles"]) {
    session[k] = function () {
      const v = cur ? cur.session[k] : undefined;
      return Array.isArray(v) ? v.slice() : v;
    };
  }
  const fixed = (value) => ({ value: freeze(value), writable: false, enumerable: false, configurable: false });
  const open = { value: undefined, writable: true, enumerable: false, configurable: false };
  Object.defineProperties(g, {
    db: fixed(db), session: fixed(session), Logger: fixed(Logger), UserError: fixed(UserError),
    utils: fixed(utils), console: fixed(Logger),
    query: open, rows: open, skipQuery: open, skipDML: open,
  });
  // Callbacks that run whenever the collector likes would run inside a later execution.
  delete g.FinalizationRegistry;
  delete g.WeakRef;
  function reset(input) {
    cur = input;
    g.query = input ? input.query : undefined;
    g.rows = input ? input.rows : undefined;
    g.skipQuery = false;
    g.skipDML = false;
  }
  return freeze({
    setup: reset,
    teardown() { reset(null); },
    hook(fn) {
      return fn().then(() => ({
        query: g.query, rows: g.rows, skipQuery: !!g.skipQuery, skipDML: !!g.skipDML }));
    },
    fn(module, name, arg) {
      return import(module).then((ns) => {
        const f = ns[name];
        if (typeof f !== "function") {
          throw { __cloudioNotFound: "module `" + module.split("@")[0] + "` has no exported function `" + name + "`" };
        }
        return f(arg);
      });
    },
  });
})"#;

/// Freezes everything a script can reach that outlives an execution: every intrinsic (from
/// the globals, and those only syntax reaches), the platform's objects, and the global object
/// itself (only the four hook globals stay writable). Data properties that instances commonly
/// set on themselves (`name`, `message`, `constructor`, `toString`, ...) become accessors
/// first, so `this.name = "MyError"` in a subclass still works on a frozen prototype.
const LOCKDOWN: &str = r#"(function () {
  "use strict";
  const g = globalThis;
  const getProto = Object.getPrototypeOf, ownKeys = Reflect.ownKeys,
    getDesc = Object.getOwnPropertyDescriptor, define = Object.defineProperty;
  const overridable = ["constructor", "name", "message", "toString", "valueOf",
    "toLocaleString", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable", "toJSON"];
  const protos = [Object.prototype, Function.prototype, Array.prototype, Error.prototype,
    EvalError.prototype, RangeError.prototype, ReferenceError.prototype, SyntaxError.prototype,
    TypeError.prototype, URIError.prototype, AggregateError.prototype, Promise.prototype,
    Date.prototype, RegExp.prototype, Map.prototype, Set.prototype, String.prototype,
    Number.prototype, Boolean.prototype, g.UserError.prototype];
  for (const proto of protos) {
    for (const key of overridable) {
      const d = getDesc(proto, key);
      if (!d || !("value" in d) || !d.configurable) continue;
      const value = d.value;
      define(proto, key, {
        get() { return value; },
        set(v) {
          if (this === proto) throw new TypeError("Cannot assign to read only property '" + key + "'");
          define(this, key, { value: v, writable: true, enumerable: true, configurable: true });
        },
        enumerable: d.enumerable, configurable: false,
      });
    }
  }
  // The global object is handled below, property by property: the hook globals stay open.
  const seen = new WeakSet([g]);
  function deep(o) {
    if (o === null || (typeof o !== "object" && typeof o !== "function") || seen.has(o)) return;
    seen.add(o);
    Object.freeze(o);
    deep(getProto(o));
    for (const k of ownKeys(o)) {
      const d = getDesc(o, k);
      if (!d) continue;
      if ("value" in d) deep(d.value); else { deep(d.get); deep(d.set); }
    }
  }
  const hidden = [async function () {}, function* () {}, async function* () {}, () => {},
    [][Symbol.iterator](), new Map()[Symbol.iterator](), new Set()[Symbol.iterator](),
    ""[Symbol.iterator](), "a".matchAll(/a/g), (function () { return arguments; })(),
    (function* () {})(), (async function* () {})(), Promise.resolve()];
  for (const h of hidden) deep(h);
  const keep = ["query", "rows", "skipQuery", "skipDML"];
  for (const k of ownKeys(g)) {
    const d = getDesc(g, k);
    if (keep.includes(k)) continue;
    if ("value" in d) deep(d.value); else { deep(d.get); deep(d.set); }
    if (d.configurable) define(g, k, { writable: false, configurable: false });
  }
  Object.preventExtensions(g);
})"#;

/// Resolves and loads an app's modules from memory; nothing else can be imported.
#[derive(Clone, Default)]
struct AppModules(Rc<RefCell<Arc<Modules>>>);

/// `moduleUri` for an import `name` from module `base`: relative names against `base`'s
/// folder, `.js`/`.ts` dropped; `..` never leaves the app.
fn module_key(base: &str, name: &str) -> Option<String> {
    let name = name
        .strip_suffix(".js")
        .or_else(|| name.strip_suffix(".ts"))
        .unwrap_or(name);
    let mut parts: Vec<&str> = Vec::new();
    if name.starts_with("./") || name.starts_with("../") {
        parts.extend(base.split('/'));
        parts.pop();
    }
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Resolver for AppModules {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<rquickjs::loader::ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        // Every call imports its modules under names of its own (`payroll/calc@17`), so a
        // module's top-level state is fresh for each call in a kept context.
        let (base, call) = base.split_once('@').unwrap_or((base, ""));
        let (name, named_call) = name.split_once('@').unwrap_or((name, ""));
        let call = if named_call.is_empty() {
            call
        } else {
            named_call
        };
        match module_key(base, name) {
            Some(key) if self.0.borrow().contains_key(&key) => Ok(if call.is_empty() {
                key
            } else {
                format!("{key}@{call}")
            }),
            _ => Err(rquickjs::Error::new_resolving(base, name)),
        }
    }
}

impl Loader for AppModules {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<rquickjs::loader::ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, rquickjs::module::Declared>> {
        let key = name.split_once('@').map_or(name, |(k, _)| k);
        let source = self.0.borrow().get(key).cloned();
        match source {
            Some(js) => Module::declare(ctx.clone(), name, js.as_bytes().to_vec()),
            None => Err(rquickjs::Error::new_loading(name)),
        }
    }
}

/// One worker's runtime, kept between executions until one hits a limit.
struct Worker {
    counters: Arc<Counters>,
    /// The hooks' context (dropped before its runtime).
    prepared: Option<Prepared>,
    rt: Option<Runtime>,
    limits: Option<crate::Limits>,
    deadline: Rc<Cell<Option<Instant>>>,
    interrupted: Rc<Cell<bool>>,
    modules: AppModules,
}

/// How an execution ended inside the worker.
enum Failure {
    Thrown(Json, String),
    Limit(String),
}

impl Worker {
    fn new(counters: Arc<Counters>) -> Worker {
        Worker {
            counters,
            prepared: None,
            rt: None,
            limits: None,
            deadline: Rc::default(),
            interrupted: Rc::default(),
            modules: AppModules::default(),
        }
    }

    fn runtime(&mut self, limits: crate::Limits) -> rquickjs::Result<Runtime> {
        if let (Some(rt), Some(l)) = (&self.rt, &self.limits)
            && l.memory_bytes == limits.memory_bytes
            && l.stack_bytes == limits.stack_bytes
        {
            return Ok(rt.clone());
        }
        self.prepared = None;
        self.rt = None;
        let rt = Runtime::new()?;
        rt.set_memory_limit(limits.memory_bytes);
        rt.set_max_stack_size(limits.stack_bytes);
        let (deadline, interrupted) = (self.deadline.clone(), self.interrupted.clone());
        rt.set_interrupt_handler(Some(Box::new(move || {
            let over = deadline.get().is_some_and(|d| Instant::now() >= d);
            if over {
                interrupted.set(true);
            }
            over
        })));
        rt.set_loader(self.modules.clone(), self.modules.clone());
        self.rt = Some(rt.clone());
        self.limits = Some(limits);
        Ok(rt)
    }

    fn run(&mut self, job: Job) {
        let Job {
            exec,
            events,
            reply_tx,
            replies,
            _permit,
        } = job;
        let link = Link {
            events,
            reply_tx,
            replies,
        };
        let started = Instant::now();
        let out = self.execute(&exec, &link);
        let c = &self.counters;
        c.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let counter = match &out {
            Ok(_) => &c.ok,
            Err(ScriptError::User(_)) => &c.user_error,
            Err(_) => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.rt.is_none() {
            // Discarded after a limit.
            c.limit.fetch_add(1, Ordering::Relaxed);
        }
        let events = link.events;
        let _ = events.send(Event::Done(out));
    }

    fn execute(&mut self, exec: &Execution, link: &Link) -> Result<Json, ScriptError> {
        let script_err = |m: String| ScriptError::Script(format!("{}: {m}", exec.name));
        let rt = self
            .runtime(exec.limits)
            .map_err(|e| script_err(e.to_string()))?;
        if let Program::Function { modules, .. } = &exec.program {
            *self.modules.0.borrow_mut() = modules.clone();
        }
        let started = Instant::now();
        let deadline = started + exec.limits.wall;
        self.interrupted.set(false);
        self.deadline.set(Some(deadline));
        let result = match &exec.program {
            Program::Hook { .. } => {
                if self.prepared.is_none() {
                    match Prepared::new(&rt, true) {
                        Ok(p) => self.prepared = Some(p),
                        Err(e) => return Err(script_err(failure_text(e))),
                    }
                }
                match &mut self.prepared {
                    Some(p) => p.run(exec, link, deadline),
                    None => Err(Failure::Limit("no context".into())),
                }
            }
            Program::Function { .. } => {
                // Each call's modules stay in the context until it is dropped: start a new
                // one every so often.
                if self
                    .prepared
                    .as_ref()
                    .is_some_and(|p| p.function_calls >= FUNCTION_CALLS_PER_CONTEXT)
                {
                    self.prepared = None;
                }
                if self.prepared.is_none() {
                    match Prepared::new(&rt, true) {
                        Ok(p) => self.prepared = Some(p),
                        Err(e) => return Err(script_err(failure_text(e))),
                    }
                }
                match &mut self.prepared {
                    Some(p) => {
                        p.function_calls += 1;
                        p.run(exec, link, deadline)
                    }
                    None => Err(Failure::Limit("no context".into())),
                }
            }
        };
        // Work a script left queued would run inside the next execution: start afresh.
        if rt.is_job_pending() {
            self.prepared = None;
            self.rt = None;
        }
        self.deadline.set(None);
        let interrupted = self.interrupted.get();
        let out = match result {
            Ok(v) => Ok(v),
            Err(_) if interrupted => {
                self.prepared = None;
                self.rt = None;
                Err(script_err(format!(
                    "the script ran longer than its limit of {} ms",
                    exec.limits.wall.as_millis()
                )))
            }
            Err(Failure::Limit(m)) => {
                self.prepared = None;
                self.rt = None;
                Err(script_err(m))
            }
            Err(Failure::Thrown(reason, stack)) => {
                let out = classify(exec, &reason);
                if let Err(ScriptError::Script(m)) = &out {
                    tracing::warn!(
                        target: "script",
                        request_id = exec.request_id.as_deref(),
                        app = %exec.session.app_uid,
                        script = %exec.name,
                        error = ?m,
                        stack = ?stack,
                        "script failed"
                    );
                    if is_resource_error(m) {
                        self.prepared = None;
                        self.rt = None;
                    }
                }
                out
            }
        };
        *self.modules.0.borrow_mut() = Arc::default();
        // Contexts are kept: QuickJS collects on its own as it allocates.
        out
    }
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Limit(m) => m,
        Failure::Thrown(reason, _) => reason.to_string(),
    }
}

fn is_resource_error(m: &str) -> bool {
    [
        "out of memory",
        "stack overflow",
        "call stack size exceeded",
        "null was thrown",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// The error an execution's rejection reason means.
fn classify(exec: &Execution, reason: &Json) -> Result<Json, ScriptError> {
    if let Some(m) = reason.get("__cloudioNotFound").and_then(Json::as_str) {
        return Err(ScriptError::NotFound(m.to_string()));
    }
    let name = reason.get("name").and_then(Json::as_str).unwrap_or("");
    let message = reason.get("message").and_then(Json::as_str);
    if name == "UserError" {
        return Err(ScriptError::User(message.unwrap_or("").to_string()));
    }
    let text = match (name, message) {
        ("", Some(m)) => m.to_string(),
        (n, Some(m)) => format!("{n}: {m}"),
        (_, None) => match reason {
            Json::String(s) => s.clone(),
            Json::Null => "null was thrown (often: out of memory)".into(),
            other => other.to_string(),
        },
    };
    Err(ScriptError::Script(format!("{}: {text}", exec.name)))
}

/// The caught exception of a failed call.
fn caught<'js>(ctx: &Ctx<'js>, e: rquickjs::Error) -> Value<'js> {
    match e {
        rquickjs::Error::Exception => ctx.catch(),
        other => rquickjs::String::from_str(ctx.clone(), &other.to_string())
            .map(|s| s.into_value())
            .unwrap_or_else(|_| Value::new_null(ctx.clone())),
    }
}

/// `(name, message, stack)` of a thrown value.
fn describe<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> (String, String, String) {
    let j = reason_json(ctx, v);
    let get = |k: &str| j.get(k).and_then(Json::as_str).unwrap_or("").to_string();
    let message = match j.get("message").and_then(Json::as_str) {
        Some(m) => m.to_string(),
        None => match &j {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        },
    };
    (get("name"), message, get("stack"))
}

/// A thrown value as JSON, keeping an `Error`'s name, message and stack (which are not
/// enumerable and so invisible to `JSON.stringify`).
fn reason_json<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> Json {
    if let Some(obj) = v.as_object() {
        let mut m = serde_json::Map::new();
        for key in ["name", "message", "stack", "__cloudioNotFound"] {
            if let Ok(s) = obj.get::<_, Option<rquickjs::Coerced<String>>>(key)
                && let Some(s) = s
            {
                m.insert(key.into(), Json::String(s.0));
            }
        }
        if !m.is_empty() {
            return Json::Object(m);
        }
    }
    match ctx.json_stringify(v.clone()) {
        Ok(Some(s)) => s
            .to_string()
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Json::Null),
        _ => v
            .as_string()
            .and_then(|s| s.to_string().ok())
            .map_or(Json::Null, Json::String),
    }
}

/// The execution a context is running, as its native functions (`host`, `log`) see it.
struct Current {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    reply_tx: mpsc::Sender<Reply>,
    calls: u32,
    max_calls: u32,
    /// Unsettled `db` calls: their promise's resolve and reject functions.
    pending: HashMap<u64, (Persistent<Function<'static>>, Persistent<Function<'static>>)>,
    request_id: Option<String>,
    app: String,
    name: String,
}

type Shared = Rc<RefCell<Option<Current>>>;

/// A context with the platform's globals. For hooks it is made once and reused (frozen by
/// [`LOCKDOWN`], per-execution data set and cleared around each run); for a cloud function a
/// fresh one is made per call, since a module's own top-level state cannot be frozen.
struct Prepared {
    // Dropped before the context they live in.
    control: Persistent<Object<'static>>,
    hooks: HashMap<Arc<str>, Persistent<Function<'static>>>,
    current: Shared,
    /// Cloud-function calls run here so far (each leaves its module instances behind).
    function_calls: u32,
    ctx: Context,
}

/// Cloud-function calls per kept context before it is replaced.
const FUNCTION_CALLS_PER_CONTEXT: u32 = 64;

/// At most this many compiled hooks are kept per context.
const MAX_CACHED_HOOKS: usize = 256;

fn thrown<'js>(ctx: &Ctx<'js>, e: rquickjs::Error) -> Failure {
    let v = caught(ctx, e);
    let (_, _, stack) = describe(ctx, &v);
    Failure::Thrown(reason_json(ctx, &v), stack)
}

/// The channels between a worker and the caller of one execution.
struct Link {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    reply_tx: mpsc::Sender<Reply>,
    replies: mpsc::Receiver<Reply>,
}

impl Prepared {
    fn new(rt: &Runtime, lockdown: bool) -> Result<Prepared, Failure> {
        let ctx = Context::full(rt)
            .map_err(|e| Failure::Limit(format!("cannot create a context: {e}")))?;
        let current: Shared = Rc::default();
        let control = ctx.with(|ctx| -> Result<_, Failure> {
            let host = host_function(&ctx, current.clone()).map_err(|e| thrown(&ctx, e))?;
            let log = {
                let current = current.clone();
                Function::new(ctx.clone(), move |level: String, text: String| {
                    log_line(&current, &level, &text)
                })
                .map_err(|e| thrown(&ctx, e))?
            };
            let prelude: Function = ctx.eval(PRELUDE).map_err(|e| thrown(&ctx, e))?;
            let control: Object = prelude.call((host, log)).map_err(|e| thrown(&ctx, e))?;
            if lockdown {
                let lock: Function = ctx.eval(LOCKDOWN).map_err(|e| thrown(&ctx, e))?;
                lock.call::<_, ()>(()).map_err(|e| thrown(&ctx, e))?;
            }
            Ok(Persistent::save(&ctx, control))
        })?;
        Ok(Prepared {
            control,
            hooks: HashMap::new(),
            current,
            function_calls: 0,
            ctx,
        })
    }

    /// Runs one execution in this context.
    fn run(&mut self, exec: &Execution, link: &Link, deadline: Instant) -> Result<Json, Failure> {
        *self.current.borrow_mut() = Some(Current {
            events: link.events.clone(),
            reply_tx: link.reply_tx.clone(),
            calls: 0,
            max_calls: exec.limits.max_host_calls,
            pending: HashMap::new(),
            request_id: exec.request_id.clone(),
            app: exec.session.app_uid.clone(),
            name: exec.name.clone(),
        });
        let Prepared {
            control,
            hooks,
            current,
            function_calls,
            ctx,
        } = self;
        let call = *function_calls;
        let out = ctx.with(|ctx| {
            let control = control.clone().restore(&ctx).map_err(|e| thrown(&ctx, e))?;
            let at = At {
                link,
                deadline,
                call,
            };
            let out = run_with(&ctx, &control, hooks, current, exec, &at);
            if let Ok(teardown) = control.get::<_, Function>("teardown") {
                let _ = teardown.call::<_, ()>(());
            }
            // The unsettled calls' functions are JS values: free them while the context is
            // entered, not after.
            *current.borrow_mut() = None;
            out
        });
        *self.current.borrow_mut() = None;
        out
    }
}

/// Where an execution runs: its channels, its deadline, and which cloud-function call of the
/// context it is (its modules are imported under that number).
#[derive(Clone, Copy)]
struct At<'a> {
    link: &'a Link,
    deadline: Instant,
    call: u32,
}

fn run_with<'js>(
    ctx: &Ctx<'js>,
    control: &Object<'js>,
    hooks: &mut HashMap<Arc<str>, Persistent<Function<'static>>>,
    current: &Shared,
    exec: &Execution,
    at: &At<'_>,
) -> Result<Json, Failure> {
    let At {
        link,
        deadline,
        call: call_number,
    } = *at;
    let input_js = to_js(ctx, &exec.input).map_err(|e| thrown(ctx, e))?;
    if let Some(o) = input_js.as_object() {
        let session = serde_json::to_value(&exec.session).unwrap_or(Json::Null);
        to_js(ctx, &session)
            .and_then(|v| o.set("session", v))
            .map_err(|e| thrown(ctx, e))?;
    }
    let call = |name: &str| {
        control
            .get::<_, Function<'js>>(name)
            .map_err(|e| thrown(ctx, e))
    };
    call("setup")?
        .call::<_, ()>((input_js.clone(),))
        .map_err(|e| thrown(ctx, e))?;
    let promise: Promise<'js> = match &exec.program {
        Program::Hook { body } => {
            let hook = match hooks.get(body) {
                Some(f) => f.clone().restore(ctx).map_err(|e| thrown(ctx, e))?,
                None => {
                    let f: Function<'js> =
                        ctx.eval(hook_source(body)).map_err(|e| thrown(ctx, e))?;
                    // Shared by every execution of this hook: nothing may be hung on it.
                    let frozen: Function<'js> = ctx
                        .globals()
                        .get::<_, Object<'js>>("Object")
                        .and_then(|o| o.get::<_, Function<'js>>("freeze"))
                        .and_then(|freeze| freeze.call((f.clone(),)))
                        .map_err(|e| thrown(ctx, e))?;
                    if hooks.len() >= MAX_CACHED_HOOKS {
                        hooks.clear();
                    }
                    hooks.insert(body.clone(), Persistent::save(ctx, frozen.clone()));
                    frozen
                }
            };
            call("hook")?.call((hook,)).map_err(|e| thrown(ctx, e))?
        }
        Program::Function {
            module, function, ..
        } => {
            let arg: Value<'js> = input_js
                .as_object()
                .and_then(|o| o.get::<_, Value<'js>>("arg").ok())
                .unwrap_or_else(|| Value::new_null(ctx.clone()));
            call("fn")?
                .call((format!("{module}@{call_number}"), function.as_str(), arg))
                .map_err(|e| thrown(ctx, e))?
        }
    };
    drive(
        ctx,
        &promise,
        current,
        link,
        deadline,
        exec.limits.memory_bytes,
    )
}

fn host_function<'js>(ctx: &Ctx<'js>, current: Shared) -> rquickjs::Result<Function<'js>> {
    Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, op: String, args: String| -> rquickjs::Result<Promise<'js>> {
            host_call(&ctx, &current, op, &args)
        },
    )
}

/// `host(op, argsJson)`: forwards a `db` call to the caller; returns the promise its reply
/// settles.
fn host_call<'js>(
    ctx: &Ctx<'js>,
    current: &Shared,
    op: String,
    args: &str,
) -> rquickjs::Result<Promise<'js>> {
    let (promise, resolve, reject) = ctx.promise()?;
    let refusal = {
        let mut guard = current.borrow_mut();
        match guard.as_mut() {
            None => Some("no execution is running".to_string()),
            Some(cur) => {
                cur.calls = cur.calls.saturating_add(1);
                let n = cur.calls;
                if n > cur.max_calls {
                    Some(format!(
                        "at most {} db calls per execution (this was call {n})",
                        cur.max_calls
                    ))
                } else {
                    let id = u64::from(n);
                    let call = HostCall {
                        op,
                        args: serde_json::from_str(args).unwrap_or(Json::Null),
                        id,
                        reply: cur.reply_tx.clone(),
                    };
                    if cur.events.send(Event::Call(call)).is_err() {
                        Some("the request ended".to_string())
                    } else {
                        cur.pending.insert(
                            id,
                            (
                                Persistent::save(ctx, resolve),
                                Persistent::save(ctx, reject.clone()),
                            ),
                        );
                        None
                    }
                }
            }
        }
    };
    if let Some(m) = refusal {
        reject.call::<_, ()>((m,))?;
    }
    Ok(promise)
}

/// `log(level, text)`: a line in the server log, tagged with the execution.
fn log_line(current: &Shared, level: &str, text: &str) {
    let guard = current.borrow();
    let (rid, app, name) = match guard.as_ref() {
        Some(c) => (c.request_id.as_deref(), c.app.as_str(), c.name.as_str()),
        None => (None, "", ""),
    };
    match level {
        "error" => {
            tracing::error!(target: "script", request_id = rid, app = %app, script = %name, "{text:?}")
        }
        "warn" => {
            tracing::warn!(target: "script", request_id = rid, app = %app, script = %name, "{text:?}")
        }
        "debug" => {
            tracing::debug!(target: "script", request_id = rid, app = %app, script = %name, "{text:?}")
        }
        _ => {
            tracing::info!(target: "script", request_id = rid, app = %app, script = %name, "{text:?}")
        }
    }
}

/// Runs the script's jobs until its promise settles, answering its host calls as the replies
/// arrive; the wall clock bounds the whole.
fn drive<'js>(
    ctx: &Ctx<'js>,
    promise: &Promise<'js>,
    current: &Shared,
    link: &Link,
    deadline: Instant,
    max_result_bytes: usize,
) -> Result<Json, Failure> {
    loop {
        while ctx.execute_pending_job() {}
        match promise.state() {
            PromiseState::Resolved => {
                let v: Value<'js> = match promise.result::<Value<'js>>() {
                    Some(r) => r.map_err(|e| thrown(ctx, e))?,
                    None => Value::new_null(ctx.clone()),
                };
                // As `JSON.stringify` would give it, but built directly (not the script's own
                // `JSON`, which it may have replaced).
                return match from_js(ctx, v, max_result_bytes) {
                    Ok(v) => Ok(v.unwrap_or(Json::Null)),
                    Err(m) => Err(Failure::Thrown(
                        serde_json::json!({ "message": m }),
                        String::new(),
                    )),
                };
            }
            PromiseState::Rejected => {
                let reason = match promise.result::<Value<'js>>() {
                    Some(Err(e)) => caught(ctx, e),
                    Some(Ok(v)) => v,
                    None => Value::new_null(ctx.clone()),
                };
                let (_, _, stack) = describe(ctx, &reason);
                return Err(Failure::Thrown(reason_json(ctx, &reason), stack));
            }
            PromiseState::Pending => {}
        }
        let waiting = current.borrow().as_ref().map_or(0, |c| c.pending.len());
        if waiting == 0 {
            return Err(Failure::Limit(
                "the script awaits something that can never happen (no timers exist here)".into(),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, result) = match link.replies.recv_timeout(left) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(Failure::Limit(format!(
                    "the script waited on db calls past its wall-clock limit ({waiting} pending)"
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure::Limit("the request ended".into()));
            }
        };
        let entry = current
            .borrow_mut()
            .as_mut()
            .and_then(|c| c.pending.remove(&id));
        let Some((resolve, reject)) = entry else {
            continue;
        };
        let resolve = resolve.restore(ctx).map_err(|e| thrown(ctx, e))?;
        let reject = reject.restore(ctx).map_err(|e| thrown(ctx, e))?;
        let settled = match result {
            Ok(v) => to_js(ctx, &v).and_then(|v| resolve.call::<_, ()>((v,))),
            Err(refusal) => {
                let (message, user) = match refusal {
                    Refusal::Error(m) => (m, false),
                    Refusal::User(m) => (m, true),
                };
                to_js(ctx, &serde_json::json!({"message": message, "user": user}))
                    .and_then(|v| reject.call::<_, ()>((v,)))
            }
        };
        settled.map_err(|e| thrown(ctx, e))?;
    }
}
