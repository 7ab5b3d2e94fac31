//! Workers that run executions in QuickJS, in a kept context frozen at creation, and the event
//! loop that connects a script's `db` calls to the caller.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use rquickjs::loader::{Loader, Resolver};
use rquickjs::promise::PromiseState;
use rquickjs::{Context, Ctx, Function, Module, Object, Promise, Runtime, Value};
use serde_json::Value as Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compile::Kind;
use crate::convert::{FromInput, Made, from_js, put_back, to_js, to_js_input};
use crate::modules::module_key;
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
    inner: RunningInner,
}

enum RunningInner {
    /// Finished on the caller's own thread already.
    Done(Option<Result<Json, ScriptError>>),
    /// Running on a worker thread.
    Events(tokio::sync::mpsc::UnboundedReceiver<Event>),
}

impl Running {
    pub async fn next(&mut self) -> Event {
        let stopped = || ScriptError::Script("the script worker stopped".into());
        match &mut self.inner {
            RunningInner::Done(out) => Event::Done(out.take().unwrap_or_else(|| Err(stopped()))),
            RunningInner::Events(rx) => rx
                .recv()
                .await
                .unwrap_or_else(|| Event::Done(Err(stopped()))),
        }
    }
}

struct Job {
    exec: Execution,
    worker: Worker,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    reply_tx: mpsc::Sender<Reply>,
    replies: mpsc::Receiver<Reply>,
    /// Held while the job runs: the pool's bound. `None` for a nested execution.
    permit: Option<OwnedSemaphorePermit>,
}

/// At most `size` executions at once, each in a runtime of the pool's. An execution starts on
/// the caller's thread ("inline", no hand-off between threads), and moves to one of the pool's
/// threads when it makes its first `db` call or runs longer than [`INLINE_SLICE`]: it starts
/// again there, and its program runs on the threads from then on.
pub struct Pool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    /// Runtimes not running anything now (at most `size` exist).
    idle: Arc<Mutex<Vec<Worker>>>,
    /// Programs that must run on the pool's threads ([`program_key`]).
    threaded: Mutex<HashSet<u64>>,
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
    inline: AtomicU64,
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
    /// Of all: run whole on the caller's thread.
    pub inline: u64,
    pub seconds: f64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "script::Pool({} workers)", self.size)
    }
}

/// How long an execution may run on the caller's thread (an async one, serving other requests
/// too) before it is stopped and started again on a thread of the pool.
const INLINE_SLICE: Duration = Duration::from_millis(2);

/// Programs remembered as needing the threads; past this the memory is cleared.
const MAX_THREADED: usize = 4096;

/// Thread stack of a worker: well above QuickJS's own stack limit, which is what stops deep
/// recursion.
const THREAD_STACK: usize = 16 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which program an execution runs, for [`Pool::threaded`]: a hook's body (by address: a
/// body freed and another allocated there only runs on the threads sooner than it must), a
/// function's name in its app's modules.
fn program_key(exec: &Execution) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match &exec.program {
        Program::Hook { body } => {
            0u8.hash(&mut h);
            body_address(body).hash(&mut h);
        }
        Program::Function {
            modules,
            module,
            function,
        } => {
            1u8.hash(&mut h);
            (Arc::as_ptr(modules) as usize).hash(&mut h);
            module.hash(&mut h);
            function.hash(&mut h);
        }
    }
    h.finish()
}

/// Where a hook's body lives: the key it is known by, in [`program_key`] and the
/// [`HookCache`] (cheaper than hashing the text; the cache keeps the body alive).
fn body_address(body: &Arc<str>) -> usize {
    Arc::as_ptr(body) as *const u8 as usize
}

impl Pool {
    pub fn new(size: usize) -> Pool {
        let size = size.max(1);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let idle: Arc<Mutex<Vec<Worker>>> = Arc::default();
        for i in 0..size {
            let rx = rx.clone();
            let idle = idle.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("script-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    loop {
                        let job = lock(&rx).recv();
                        let Ok(job) = job else { return };
                        let (worker, permit) = run_job(job);
                        if permit.is_some() {
                            lock(&idle).push(worker);
                        }
                        drop(permit);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a script worker");
            }
        }
        Pool {
            jobs,
            permits: Arc::new(Semaphore::new(size)),
            idle,
            threaded: Mutex::default(),
            size,
            counters: Arc::default(),
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
            inline: get(&c.inline),
            seconds: get(&c.micros) as f64 / 1e6,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Executions running now.
    pub fn busy(&self) -> usize {
        self.size.saturating_sub(self.permits.available_permits())
    }

    /// Starts an execution, waiting for a free runtime up to the execution's wall-clock limit
    /// ([`ScriptError::Busy`] after that). A `nested` execution (a hook run by a script's own
    /// `db` call, whose caller holds a runtime already) runs in a fresh runtime on a thread of
    /// its own instead, so nesting can never wait for itself.
    pub async fn start(&self, mut exec: Execution, nested: bool) -> Result<Running, ScriptError> {
        if nested {
            let worker = Worker::new(self.counters.clone());
            return spawn_nested(exec, worker);
        }
        // A free runtime is the common case: no timer for it.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(exec.limits.wall, self.permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        return Err(ScriptError::Busy);
                    }
                }
            }
        };
        let popped = lock(&self.idle).pop();
        let mut worker = popped.unwrap_or_else(|| Worker::new(self.counters.clone()));
        let key = program_key(&exec);
        if !lock(&self.threaded).contains(&key) {
            if let Some(out) = worker.run_inline(&mut exec) {
                lock(&self.idle).push(worker);
                drop(permit);
                return Ok(Running {
                    inner: RunningInner::Done(Some(out)),
                });
            }
            let mut threaded = lock(&self.threaded);
            if threaded.len() >= MAX_THREADED {
                threaded.clear();
            }
            threaded.insert(key);
        }
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::channel();
        self.jobs
            .send(Job {
                exec,
                worker,
                events,
                reply_tx,
                replies,
                permit: Some(permit),
            })
            .map_err(|_| ScriptError::Script("the script workers stopped".into()))?;
        Ok(Running {
            inner: RunningInner::Events(events_rx),
        })
    }
}

/// Runs a nested execution on a thread of its own, outside the pool's bound.
fn spawn_nested(exec: Execution, worker: Worker) -> Result<Running, ScriptError> {
    let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (reply_tx, replies) = mpsc::channel();
    let job = Job {
        exec,
        worker,
        events,
        reply_tx,
        replies,
        permit: None,
    };
    std::thread::Builder::new()
        .name("script-nested".into())
        .stack_size(THREAD_STACK)
        .spawn(move || drop(run_job(job)))
        .map_err(|e| ScriptError::Script(format!("cannot start a script thread: {e}")))?;
    Ok(Running {
        inner: RunningInner::Events(events_rx),
    })
}

/// Runs a job to its end on this thread; gives back its runtime and its permit (released
/// once the runtime is back in the idle list, so at most `size` runtimes ever exist).
fn run_job(job: Job) -> (Worker, Option<OwnedSemaphorePermit>) {
    let Job {
        mut exec,
        mut worker,
        events,
        reply_tx,
        replies,
        permit,
    } = job;
    let link = Link {
        events,
        reply_tx,
        replies,
    };
    let out = worker.run(&mut exec, &link);
    let _ = link.events.send(Event::Done(out));
    (worker, permit)
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
  // Unsettled `db` calls by id: their promise's resolve and reject.
  let pending = new Map();
  function method(op) {
    return function () {
      const id = host(op, stringify(Array.prototype.slice.call(arguments), replacer));
      const p = (typeof id === "number"
        ? new Promise((resolve, reject) => { pending.set(id, [resolve, reject]); })
        : Promise.reject(id)).then(null, refused);
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
    teardown() { reset(null); if (pending.size) pending = new Map(); },
    settle(id, ok, value) {
      const f = pending.get(id);
      if (f) { pending.delete(id); f[ok ? 0 : 1](value); }
    },
    hook(fn) {
      const withQuery = !cur.rowsOnly;
      return fn().then(() => withQuery
        ? { query: g.query, rows: g.rows, skipQuery: !!g.skipQuery, skipDML: !!g.skipDML }
        : { rows: g.rows, skipDML: !!g.skipDML });
    },
    fn(module, name, arg) {
      return import(module).then((ns) => {
        const f = ns[name];
        if (typeof f !== "function") {
          throw { __cloudioNotFound: "module `" + module.split(/[@#]/)[0] + "` has no exported function `" + name + "`" };
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
struct AppModules(Arc<Mutex<Arc<Modules>>>);

/// A module's name in a context: `payroll/calc@17` (an instance for call 17 of the context,
/// fresh for that call) or `payroll/calc#3` (the shared instance of module set 3). Its imports
/// get the same suffix.
fn split_instance(name: &str) -> (&str, &str) {
    match name.find(['@', '#']) {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    }
}

impl Resolver for AppModules {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<rquickjs::loader::ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        let (base, instance) = split_instance(base);
        let (name, named) = split_instance(name);
        let instance = if named.is_empty() { instance } else { named };
        match module_key(base, name) {
            Some(key) if lock(&self.0).contains_key(&key) => Ok(format!("{key}{instance}")),
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
        let (key, _) = split_instance(name);
        let source = lock(&self.0).source(key);
        match source {
            Some(js) => Module::declare(ctx.clone(), name, js.as_bytes().to_vec()),
            None => Err(rquickjs::Error::new_loading(name)),
        }
    }
}

/// One runtime of the pool, kept between executions until one hits a limit. Not tied to a
/// thread: an execution runs it on the caller's thread or on one of the pool's.
struct Worker {
    counters: Arc<Counters>,
    /// The kept context (dropped before its runtime).
    prepared: Option<Prepared>,
    rt: Option<Runtime>,
    limits: Option<crate::Limits>,
    /// When the interrupt handler stops the running script.
    deadline: Arc<Mutex<Option<Instant>>>,
    interrupted: Arc<AtomicBool>,
    modules: AppModules,
}

/// Which instance of its module a cloud-function call imports (see [`split_instance`]).
#[derive(Clone, Copy)]
enum Instance {
    /// A hook: no module.
    None,
    /// The shared instance of module set `id`.
    Shared(u64),
    /// One of its own, fresh for this call.
    Own,
}

/// How an execution ended inside the worker.
enum Failure {
    Thrown(Json, String),
    Limit(String),
    /// A run on the caller's thread made a `db` call or wrote too much to the log: it starts
    /// again on a thread of the pool.
    Moved,
}

impl Worker {
    fn new(counters: Arc<Counters>) -> Worker {
        Worker {
            counters,
            prepared: None,
            rt: None,
            limits: None,
            deadline: Arc::default(),
            interrupted: Arc::default(),
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
        self.discard();
        let rt = Runtime::new()?;
        rt.set_memory_limit(limits.memory_bytes);
        rt.set_max_stack_size(limits.stack_bytes);
        let (deadline, interrupted) = (self.deadline.clone(), self.interrupted.clone());
        rt.set_interrupt_handler(Some(Box::new(move || {
            let over = lock(&deadline).is_some_and(|d| Instant::now() >= d);
            if over {
                interrupted.store(true, Ordering::Relaxed);
            }
            over
        })));
        rt.set_loader(self.modules.clone(), self.modules.clone());
        self.rt = Some(rt.clone());
        self.limits = Some(limits);
        Ok(rt)
    }

    /// Drops the context and the runtime: the next execution starts afresh.
    fn discard(&mut self) {
        self.prepared = None;
        self.rt = None;
    }

    /// Runs an execution to its end on this thread, serving its `db` calls through `link`.
    fn run(&mut self, exec: &mut Execution, link: &Link) -> Result<Json, ScriptError> {
        self.execute(exec, Some(link)).unwrap_or_else(|| {
            Err(ScriptError::Script(format!(
                "{}: the script could not run",
                exec.name
            )))
        })
    }

    /// Runs an execution on the caller's thread for at most [`INLINE_SLICE`]; `None` if it
    /// must start again on a thread of the pool (it made a `db` call or ran too long).
    fn run_inline(&mut self, exec: &mut Execution) -> Option<Result<Json, ScriptError>> {
        self.execute(exec, None)
    }

    fn execute(
        &mut self,
        exec: &mut Execution,
        link: Option<&Link>,
    ) -> Option<Result<Json, ScriptError>> {
        let started = Instant::now();
        let out = self.attempt(exec, link);
        *lock(&self.modules.0) = Arc::default();
        // Over for good (it will not start again elsewhere): the input rows a hook handed
        // back can be moved into its result.
        let out = out?.map(|(mut v, moved)| {
            put_back(&mut v, &mut exec.input, moved);
            v
        });
        let c = &self.counters;
        c.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let counter = match &out {
            Ok(_) => &c.ok,
            Err(ScriptError::User(_)) => &c.user_error,
            Err(_) => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if link.is_none() {
            c.inline.fetch_add(1, Ordering::Relaxed);
        }
        if self.rt.is_none() {
            // Discarded after a limit.
            c.limit.fetch_add(1, Ordering::Relaxed);
        }
        Some(out)
    }

    fn attempt(
        &mut self,
        exec: &Execution,
        link: Option<&Link>,
    ) -> Option<Result<Output, ScriptError>> {
        let script_err = |m: String| ScriptError::Script(format!("{}: {m}", exec.name));
        let rt = match self.runtime(exec.limits) {
            Ok(rt) => rt,
            Err(e) => return Some(Err(script_err(e.to_string()))),
        };
        // A function's module: the shared instance of its set, or one of its own.
        let instance = match &exec.program {
            Program::Hook { .. } => Instance::None,
            Program::Function {
                modules, module, ..
            } if modules.shared(module) => Instance::Shared(modules.id()),
            Program::Function { .. } => Instance::Own,
        };
        if let Program::Function { modules, .. } = &exec.program {
            *lock(&self.modules.0) = modules.clone();
            // Module instances stay in the context until it is dropped: start a new one every
            // so often.
            if self.prepared.as_ref().is_some_and(|p| match instance {
                Instance::Shared(id) => {
                    !p.shared_sets.contains(&id) && p.shared_sets.len() >= MAX_SHARED_SETS
                }
                _ => p.function_calls >= FUNCTION_CALLS_PER_CONTEXT,
            }) {
                self.prepared = None;
            }
        }
        let prepared = match &mut self.prepared {
            Some(p) => p,
            slot => match Prepared::new(&rt) {
                Ok(p) => slot.insert(p),
                Err(e) => {
                    self.discard();
                    return Some(Err(script_err(failure_text(e))));
                }
            },
        };
        let instance = match instance {
            Instance::None => String::new(),
            Instance::Shared(id) => {
                if !prepared.shared_sets.contains(&id) {
                    prepared.shared_sets.push(id);
                }
                format!("#{id}")
            }
            Instance::Own => {
                prepared.function_calls += 1;
                format!("@{}", prepared.function_calls)
            }
        };
        let now = Instant::now();
        let deadline = now + exec.limits.wall;
        let stop = match link {
            Some(_) => deadline,
            None => deadline.min(now + INLINE_SLICE),
        };
        self.interrupted.store(false, Ordering::Relaxed);
        *lock(&self.deadline) = Some(stop);
        let result = prepared.run(exec, link, deadline, &instance);
        *lock(&self.deadline) = None;
        // Work a script left queued would run inside the next execution: start afresh.
        if rt.is_job_pending() {
            self.discard();
        }
        let interrupted = self.interrupted.load(Ordering::Relaxed);
        let out = match result {
            Ok(v) => Ok(v),
            Err(Failure::Moved) => return None,
            Err(_) if interrupted => {
                self.discard();
                if link.is_none() && Instant::now() < deadline {
                    // Stopped by the inline slice, not by its own limit.
                    return None;
                }
                Err(script_err(format!(
                    "the script ran longer than its limit of {} ms",
                    exec.limits.wall.as_millis()
                )))
            }
            Err(Failure::Limit(m)) => {
                self.discard();
                Err(script_err(m))
            }
            Err(Failure::Thrown(reason, stack)) => {
                let out = classify(exec, &reason).map(|v| (v, Vec::new()));
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
                        self.discard();
                    }
                }
                out
            }
        };
        // Contexts are kept: QuickJS collects on its own as it allocates.
        Some(out)
    }
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Limit(m) => m,
        Failure::Thrown(reason, _) => reason.to_string(),
        Failure::Moved => "the script could not run here".into(),
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
    /// `None` on the caller's thread: a `db` call moves the execution to the pool's threads.
    events: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
    reply_tx: Option<mpsc::Sender<Reply>>,
    calls: u32,
    max_calls: u32,
    /// Unsettled `db` calls (their resolve and reject live in the prelude, by id).
    pending: HashSet<u64>,
    /// Running on the caller's thread: log lines wait here until the run is known to count.
    inline: bool,
    /// The inline run must start again on a thread.
    moved: bool,
    logs: Vec<(String, String)>,
    log_bytes: usize,
    request_id: Option<String>,
    app: String,
    name: String,
}

type Shared = Arc<Mutex<Option<Current>>>;

/// Log text an inline run may hold back before it moves to a thread (which logs as it goes).
const MAX_INLINE_LOG_BYTES: usize = 64 << 10;

/// The prelude's control functions, kept in the runtime's user data while its context lives
/// (in [`CONTROL`]'s order): found by index, not by name, on every execution.
type Control<'js> = Vec<Function<'js>>;

/// The names of the prelude's control functions, in [`Control`]'s order.
const CONTROL: [&str; 5] = ["setup", "teardown", "settle", "hook", "fn"];
const SETUP: usize = 0;
const TEARDOWN: usize = 1;
const SETTLE: usize = 2;
const HOOK: usize = 3;
const FN: usize = 4;

/// The context's compiled hooks (at most [`MAX_CACHED_HOOKS`]) by the address of their body,
/// in the runtime's user data while the context lives: found without hashing the body's text
/// on every execution. [`Prepared::hook_bodies`] keeps each cached body alive, so that an
/// address names one body for as long as it is cached.
type HookCache<'js> = RefCell<HashMap<usize, Function<'js>>>;

/// The session object of the last execution ([`Prepared::session`] says whose), in the
/// runtime's user data while the context lives: the next execution of the same user in the
/// same app reuses it. Only the prelude reads it (`cur.session`), and never changes it.
type LastSession<'js> = RefCell<Option<Object<'js>>>;

/// A context with the platform's globals, made once and reused by many executions: frozen by
/// [`LOCKDOWN`], per-execution data set and cleared around each run (a cloud-function call
/// imports its modules under names of its own).
struct Prepared {
    current: Shared,
    /// Cloud-function calls with modules of their own run here so far (each leaves its
    /// module instances behind).
    function_calls: u32,
    /// The module sets whose shared instances live here.
    shared_sets: Vec<u64>,
    /// The bodies of the hooks in the context's [`HookCache`], by address.
    hook_bodies: HashMap<usize, Arc<str>>,
    /// Whose session the context's [`LastSession`] is.
    session: Option<crate::SessionInfo>,
    ctx: Context,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Values of this context must not outlive it in the runtime's user data.
        self.ctx.with(|ctx| {
            let _ = ctx.remove_userdata::<Control<'_>>();
            let _ = ctx.remove_userdata::<HookCache<'_>>();
            let _ = ctx.remove_userdata::<LastSession<'_>>();
        });
    }
}

/// Cloud-function calls with modules of their own per kept context before it is replaced.
const FUNCTION_CALLS_PER_CONTEXT: u32 = 64;

/// Module sets with shared instances per kept context (an app reloaded gets a new set).
const MAX_SHARED_SETS: usize = 8;

/// At most this many compiled hooks are kept per context.
const MAX_CACHED_HOOKS: usize = 256;

fn thrown<'js>(ctx: &Ctx<'js>, e: rquickjs::Error) -> Failure {
    let v = caught(ctx, e);
    let (_, _, stack) = describe(ctx, &v);
    Failure::Thrown(reason_json(ctx, &v), stack)
}

/// The channels between a worker thread and the caller of one execution.
struct Link {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    reply_tx: mpsc::Sender<Reply>,
    replies: mpsc::Receiver<Reply>,
}

impl Prepared {
    fn new(rt: &Runtime) -> Result<Prepared, Failure> {
        let ctx = Context::full(rt)
            .map_err(|e| Failure::Limit(format!("cannot create a context: {e}")))?;
        let current: Shared = Arc::default();
        ctx.with(|ctx| -> Result<_, Failure> {
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
            let control = CONTROL
                .iter()
                .map(|name| control.get::<_, Function>(*name))
                .collect::<rquickjs::Result<Control<'_>>>()
                .map_err(|e| thrown(&ctx, e))?;
            let lock: Function = ctx.eval(LOCKDOWN).map_err(|e| thrown(&ctx, e))?;
            lock.call::<_, ()>(()).map_err(|e| thrown(&ctx, e))?;
            let stored = ctx.store_userdata::<Control<'_>>(control).is_ok()
                && ctx
                    .store_userdata::<HookCache<'_>>(RefCell::default())
                    .is_ok()
                && ctx
                    .store_userdata::<LastSession<'_>>(RefCell::default())
                    .is_ok();
            if !stored {
                return Err(Failure::Limit("cannot keep the context's state".into()));
            }
            Ok(())
        })?;
        Ok(Prepared {
            current,
            function_calls: 0,
            shared_sets: Vec::new(),
            hook_bodies: HashMap::new(),
            session: None,
            ctx,
        })
    }

    /// Runs one execution in this context; `link: None` runs it on the caller's thread.
    fn run(
        &mut self,
        exec: &Execution,
        link: Option<&Link>,
        deadline: Instant,
        instance: &str,
    ) -> Result<Output, Failure> {
        *lock(&self.current) = Some(Current {
            events: link.map(|l| l.events.clone()),
            reply_tx: link.map(|l| l.reply_tx.clone()),
            calls: 0,
            max_calls: exec.limits.max_host_calls,
            pending: HashSet::new(),
            inline: link.is_none(),
            moved: false,
            logs: Vec::new(),
            log_bytes: 0,
            request_id: exec.request_id.clone(),
            app: exec.session.app_uid.clone(),
            name: exec.name.clone(),
        });
        let Prepared {
            current,
            ctx,
            hook_bodies,
            session,
            ..
        } = self;
        let out = ctx.with(|ctx| {
            let control = ctx
                .userdata::<Control<'_>>()
                .map(|c| Control::clone(&c))
                .filter(|c| c.len() == CONTROL.len())
                .ok_or_else(|| Failure::Limit("the context lost its state".into()))?;
            let at = At {
                link,
                deadline,
                instance,
            };
            let out = run_with(&ctx, &control, current, exec, &at, hook_bodies, session);
            let _ = control[TEARDOWN].call::<_, ()>(());
            out
        });
        let Some(cur) = lock(&self.current).take() else {
            return out;
        };
        if cur.moved {
            return Err(Failure::Moved);
        }
        for (level, text) in &cur.logs {
            emit_log(cur.request_id.as_deref(), &cur.app, &cur.name, level, text);
        }
        out
    }
}

/// An execution's result, and the input rows to move into it (see [`put_back`]).
type Output = (Json, Vec<FromInput>);

/// Where an execution runs: its channels (`None`: the caller's thread), its deadline, and the
/// suffix its module is imported under (see [`split_instance`]).
#[derive(Clone, Copy)]
struct At<'a> {
    link: Option<&'a Link>,
    deadline: Instant,
    instance: &'a str,
}

fn run_with<'js>(
    ctx: &Ctx<'js>,
    control: &Control<'js>,
    current: &Shared,
    exec: &Execution,
    at: &At<'_>,
    hook_bodies: &mut HashMap<usize, Arc<str>>,
    session: &mut Option<crate::SessionInfo>,
) -> Result<Output, Failure> {
    let instance = at.instance;
    // A hook's rows: what was made of them is kept, to recognise them in its result.
    let (input_js, made) = match exec.program {
        Program::Hook { .. } => to_js_input(ctx, &exec.input),
        Program::Function { .. } => to_js(ctx, &exec.input).map(|v| (v, Made::default())),
    }
    .map_err(|e| thrown(ctx, e))?;
    let input_rows = exec
        .input
        .get("rows")
        .and_then(Json::as_array)
        .map_or(&[][..], Vec::as_slice);
    if let Some(o) = input_js.as_object() {
        let last = ctx.userdata::<LastSession<'js>>();
        let kept = last
            .as_ref()
            .filter(|_| session.as_ref() == Some(&exec.session))
            .and_then(|l| l.borrow().clone());
        let v = match kept {
            Some(v) => v,
            None => {
                let v = session_js(ctx, &exec.session).map_err(|e| thrown(ctx, e))?;
                if let Some(l) = &last {
                    *l.borrow_mut() = Some(v.clone());
                    *session = Some(exec.session.clone());
                }
                v
            }
        };
        o.set("session", v).map_err(|e| thrown(ctx, e))?;
    }
    control[SETUP]
        .call::<_, ()>((input_js.clone(),))
        .map_err(|e| thrown(ctx, e))?;
    let promise: Promise<'js> = match &exec.program {
        Program::Hook { body } => {
            let key = body_address(body);
            let cached = ctx
                .userdata::<HookCache<'js>>()
                .and_then(|c| c.borrow().get(&key).cloned());
            let hook = match cached {
                Some(f) => f,
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
                    if let Some(cache) = ctx.userdata::<HookCache<'js>>() {
                        let mut cache = cache.borrow_mut();
                        if cache.len() >= MAX_CACHED_HOOKS {
                            cache.clear();
                            hook_bodies.clear();
                        }
                        cache.insert(key, frozen.clone());
                        hook_bodies.insert(key, body.clone());
                    }
                    frozen
                }
            };
            control[HOOK].call((hook,)).map_err(|e| thrown(ctx, e))?
        }
        Program::Function {
            module, function, ..
        } => {
            let arg: Value<'js> = input_js
                .as_object()
                .and_then(|o| o.get::<_, Value<'js>>("arg").ok())
                .unwrap_or_else(|| Value::new_null(ctx.clone()));
            control[FN]
                .call((format!("{module}{instance}"), function.as_str(), arg))
                .map_err(|e| thrown(ctx, e))?
        }
    };
    drive(
        ctx,
        control,
        &promise,
        current,
        at,
        exec.limits.memory_bytes,
        (&made, input_rows),
    )
}

/// The session as the prelude reads it (`cur.session`), built directly.
fn session_js<'js>(ctx: &Ctx<'js>, s: &crate::SessionInfo) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("userName", s.user_name.as_str())?;
    o.set("orgUid", s.org_uid.as_str())?;
    o.set("appUid", s.app_uid.as_str())?;
    let roles = rquickjs::Array::new(ctx.clone())?;
    for (i, r) in s.roles.iter().enumerate() {
        roles.set(i, r.as_str())?;
    }
    o.set("roles", roles)?;
    Ok(o)
}

fn host_function<'js>(ctx: &Ctx<'js>, current: Shared) -> rquickjs::Result<Function<'js>> {
    Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, op: String, args: String| -> rquickjs::Result<Value<'js>> {
            host_call(&ctx, &current, op, &args)
        },
    )
}

/// `host(op, argsJson)`: forwards a `db` call to the caller. Returns the call's id (the
/// prelude makes the promise its reply settles), or the message it is refused with.
fn host_call<'js>(
    ctx: &Ctx<'js>,
    current: &Shared,
    op: String,
    args: &str,
) -> rquickjs::Result<Value<'js>> {
    let outcome: Result<u32, String> = {
        let mut guard = lock(current);
        match guard.as_mut() {
            None => Err("no execution is running".to_string()),
            Some(cur) => {
                cur.calls = cur.calls.saturating_add(1);
                let n = cur.calls;
                if n > cur.max_calls {
                    Err(format!(
                        "at most {} db calls per execution (this was call {n})",
                        cur.max_calls
                    ))
                } else if cur.inline {
                    // Calls are served on the pool's threads: start again there. The promise
                    // never settles here.
                    cur.moved = true;
                    Ok(n)
                } else {
                    let id = u64::from(n);
                    match (&cur.events, &cur.reply_tx) {
                        (Some(events), Some(reply)) => {
                            let call = HostCall {
                                op,
                                args: serde_json::from_str(args).unwrap_or(Json::Null),
                                id,
                                reply: reply.clone(),
                            };
                            if events.send(Event::Call(call)).is_ok() {
                                cur.pending.insert(id);
                                Ok(n)
                            } else {
                                Err("the request ended".to_string())
                            }
                        }
                        _ => Err("the request ended".to_string()),
                    }
                }
            }
        }
    };
    match outcome {
        Ok(n) => Ok(Value::new_int(
            ctx.clone(),
            i32::try_from(n).unwrap_or(i32::MAX),
        )),
        Err(m) => Ok(rquickjs::String::from_str(ctx.clone(), &m)?.into_value()),
    }
}

/// `log(level, text)`: a line in the server log, tagged with the execution.
fn log_line(current: &Shared, level: &str, text: &str) {
    let mut guard = lock(current);
    match guard.as_mut() {
        Some(c) if c.inline => {
            c.log_bytes += text.len();
            if c.log_bytes > MAX_INLINE_LOG_BYTES {
                c.moved = true;
            } else {
                c.logs.push((level.to_string(), text.to_string()));
            }
        }
        Some(c) => emit_log(c.request_id.as_deref(), &c.app, &c.name, level, text),
        None => emit_log(None, "", "", level, text),
    }
}

fn emit_log(rid: Option<&str>, app: &str, name: &str, level: &str, text: &str) {
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
    control: &Control<'js>,
    promise: &Promise<'js>,
    current: &Shared,
    at: &At<'_>,
    max_result_bytes: usize,
    input: (&Made<'js>, &[Json]),
) -> Result<Output, Failure> {
    let At { link, deadline, .. } = *at;
    loop {
        while ctx.execute_pending_job() {}
        let (moved, waiting) = lock(current)
            .as_ref()
            .map_or((false, 0), |c| (c.moved, c.pending.len()));
        if moved {
            return Err(Failure::Moved);
        }
        match promise.state() {
            PromiseState::Resolved => {
                let v: Value<'js> = match promise.result::<Value<'js>>() {
                    Some(r) => r.map_err(|e| thrown(ctx, e))?,
                    None => Value::new_null(ctx.clone()),
                };
                // As `JSON.stringify` would give it, but built directly (not the script's own
                // `JSON`, which it may have replaced).
                return match from_js(ctx, v, max_result_bytes, input) {
                    Ok((v, moved)) => Ok((v.unwrap_or(Json::Null), moved)),
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
        let Some(link) = link.filter(|_| waiting > 0) else {
            return Err(Failure::Limit(
                "the script awaits something that can never happen (no timers exist here)".into(),
            ));
        };
        let (id, result) = match wait_reply(link, deadline) {
            Ok(reply) => reply,
            Err(Waited::PastDeadline) => {
                return Err(Failure::Limit(format!(
                    "the script waited on db calls past its wall-clock limit ({waiting} pending)"
                )));
            }
            Err(Waited::RequestEnded) => {
                return Err(Failure::Limit("the request ended".into()));
            }
        };
        let known = lock(current)
            .as_mut()
            .is_some_and(|c| c.pending.remove(&id));
        if !known {
            continue;
        }
        let (ok, value) = match result {
            Ok(v) => (true, v),
            Err(Refusal::Error(m)) => (false, serde_json::json!({"message": m, "user": false})),
            Err(Refusal::User(m)) => (false, serde_json::json!({"message": m, "user": true})),
        };
        let id = i32::try_from(id).unwrap_or(i32::MAX);
        to_js(ctx, &value)
            .and_then(|value| control[SETTLE].call::<_, ()>((id, ok, value)))
            .map_err(|e| thrown(ctx, e))?;
    }
}

/// How often an execution waiting on its `db` calls checks that its request is still there.
const REQUEST_CHECK: Duration = Duration::from_millis(20);

enum Waited {
    PastDeadline,
    RequestEnded,
}

/// The next reply to one of the execution's host calls. The worker keeps a sender of the
/// replies itself (for the calls to come), so the channel never says that the request went
/// away: a request dropped while its calls were pending (its client disconnected) is noticed
/// by its events' receiver being gone, and the execution ends then, giving back its thread
/// and its runtime, not at its wall-clock limit.
fn wait_reply(link: &Link, deadline: Instant) -> Result<Reply, Waited> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match link.replies.recv_timeout(left.min(REQUEST_CHECK)) {
            Ok(reply) => return Ok(reply),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Waited::RequestEnded),
            Err(mpsc::RecvTimeoutError::Timeout) if link.events.is_closed() => {
                return Err(Waited::RequestEnded);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if left <= REQUEST_CHECK => {
                return Err(Waited::PastDeadline);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}
