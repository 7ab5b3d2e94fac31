//! JSON values into QuickJS values and back, built directly instead of through JSON text: a
//! hook's rows cross twice per execution, and `JSON.parse`/`JSON.stringify` with serde on the
//! other side were two thirds of a trivial hook's cost.
//!
//! A hook's rows usually come back as they went in, with a field or two changed or added:
//! [`to_js_input`] remembers the JS values it made for each row ([`Made`]), and [`from_js`],
//! given them, reads only a row's changed and added fields out of QuickJS; [`put_back`] then
//! moves the input row itself into the result, once the execution can no longer start again
//! elsewhere (a field is unchanged when it holds the very string, integer, boolean or null it
//! was given: JS strings are immutable, and a value kept referenced cannot be reused for
//! another).
//!
//! `to_js` gives what `JSON.parse` would (own, writable, enumerable data properties, so a key
//! such as `__proto__` is an ordinary property). `from_js` gives what `JSON.stringify` would,
//! `toJSON` included (a `Date` becomes its ISO string), bounded in depth and size because the
//! result lives outside the runtime's memory limit.

use std::collections::HashMap;

use rquickjs::function::This;
use rquickjs::object::Property;
use rquickjs::{Array, Atom, Ctx, Function, Object, Type, Value};
use serde_json::{Map, Number, Value as Json};

/// Deepest result accepted (serde_json's own parsing limit, which applied before).
pub(crate) const MAX_DEPTH: usize = 128;

pub(crate) fn to_js<'js>(ctx: &Ctx<'js>, v: &Json) -> rquickjs::Result<Value<'js>> {
    ToJs {
        ctx,
        keys: Vec::new(),
        columns: Vec::new(),
    }
    .value(v, 0)
}

/// The JS values made for the rows of a hook's input (`input.rows`), row by row, at the
/// rows' own indices: the row object and the value of each of its fields, in order (none for
/// a row that is not an object).
#[derive(Default)]
pub(crate) struct Made<'js> {
    rows: Vec<(Value<'js>, Vec<Value<'js>>)>,
}

/// A hook's input (`{query, rows, ...}`) as `to_js` makes it, remembering what it made for
/// the rows.
pub(crate) fn to_js_input<'js>(
    ctx: &Ctx<'js>,
    input: &Json,
) -> rquickjs::Result<(Value<'js>, Made<'js>)> {
    let mut made = Made::default();
    let mut to = ToJs {
        ctx,
        keys: Vec::new(),
        columns: Vec::new(),
    };
    let Json::Object(m) = input else {
        return Ok((to.value(input, 0)?, made));
    };
    let o = Object::new(ctx.clone())?;
    for (k, item) in m {
        let value = match item {
            Json::Array(rows) if k == "rows" => {
                let a = Array::new(ctx.clone())?;
                to.rows(rows, 2, &mut made)?;
                for (i, (row, _)) in made.rows.iter().enumerate() {
                    a.set(i, row.clone())?;
                }
                a.into_value()
            }
            other => to.value(other, 1)?,
        };
        o.prop(
            k.as_str(),
            Property::from(value).writable().enumerable().configurable(),
        )?;
    }
    Ok((o.into_value(), made))
}

/// Builds JS values; `keys[depth]` remembers the property names (as atoms) of the last object
/// made at each depth: rows have the same keys in the same order, and finding an atom by its
/// text costs more than comparing the text with the last one.
struct ToJs<'a, 'js> {
    ctx: &'a Ctx<'js>,
    /// Each name with its atom, and whether it may be assigned (see [`assignable`]).
    keys: Vec<Vec<(&'a str, Atom<'js>, bool)>>,
    /// Per field of the rows, the last string made for it: a row whose field holds the same
    /// text gets the same (immutable) JS string, not a copy. Columns repeat their values (flags,
    /// WHO columns, `_rs`), and a string found here costs a comparison instead of an allocation
    /// now and a free later. Sound for [`Made`]: the same string means the same text.
    columns: Vec<Option<(&'a str, Value<'js>)>>,
}

/// Whether an object made here may get property `name` by assignment, which costs less than
/// defining it: not when `Object.prototype` has a property of that name (`__proto__` would set
/// the prototype, a frozen method would refuse, an accessor the lockdown put there would run).
fn assignable(name: &str) -> bool {
    !matches!(
        name,
        "__proto__"
            | "constructor"
            | "__defineGetter__"
            | "__defineSetter__"
            | "__lookupGetter__"
            | "__lookupSetter__"
            | "hasOwnProperty"
            | "isPrototypeOf"
            | "propertyIsEnumerable"
            | "toString"
            | "toLocaleString"
            | "valueOf"
    )
}

impl<'a, 'js> ToJs<'a, 'js> {
    /// Field `i` of a row, a string: the one made for the field of the row before when the
    /// text is the same (see [`ToJs::columns`]).
    fn column_string(&mut self, i: usize, text: &'a str) -> rquickjs::Result<Value<'js>> {
        if self.columns.len() <= i {
            self.columns.resize_with(i + 1, || None);
        }
        if let Some((last, v)) = &self.columns[i]
            && *last == text
        {
            return Ok(v.clone());
        }
        let v = rquickjs::String::from_str(self.ctx.clone(), text)?.into_value();
        self.columns[i] = Some((text, v.clone()));
        Ok(v)
    }

    fn value(&mut self, v: &'a Json, depth: usize) -> rquickjs::Result<Value<'js>> {
        let ctx = self.ctx;
        Ok(match v {
            Json::Null => Value::new_null(ctx.clone()),
            Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
            Json::Number(n) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Value::new_int(ctx.clone(), i as i32),
                _ => Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
            Json::Array(items) => {
                let a = Array::new(ctx.clone())?;
                for (i, item) in items.iter().enumerate() {
                    a.set(i, self.value(item, depth + 1)?)?;
                }
                a.into_value()
            }
            Json::Object(m) => self.object(m, depth)?.into_value(),
        })
    }

    fn object(&mut self, m: &'a Map<String, Json>, depth: usize) -> rquickjs::Result<Object<'js>> {
        let o = Object::new(self.ctx.clone())?;
        for (i, (k, item)) in m.iter().enumerate() {
            let value = self.value(item, depth + 1)?;
            let key = self.key(depth, i, k)?;
            put(&o, key, value)?;
        }
        Ok(o)
    }

    /// The rows of a hook's input, into `made` at their own indices. The objects among them are
    /// built a field at a time across the rows rather than a row at a time: QuickJS changes an
    /// object's shape in place while that object alone uses it, so row by row each row would
    /// make a chain of shapes of its own; this way each row moves to the shape the row before
    /// it made for the same keys, one shape per field in all when the rows have the same keys
    /// (as a query's do).
    fn rows(
        &mut self,
        rows: &'a [Json],
        depth: usize,
        made: &mut Made<'js>,
    ) -> rquickjs::Result<()> {
        let mut fields = Vec::with_capacity(rows.len());
        let mut width = 0;
        for row in rows {
            match row {
                Json::Object(m) => {
                    width = width.max(m.len());
                    let o = Object::new(self.ctx.clone())?.into_value();
                    made.rows.push((o, Vec::with_capacity(m.len())));
                    fields.push(Some(m.iter()));
                }
                other => {
                    made.rows.push((self.value(other, depth)?, Vec::new()));
                    fields.push(None);
                }
            }
        }
        for i in 0..width {
            for (row, (o, values)) in fields.iter_mut().zip(made.rows.iter_mut()) {
                let (Some((k, item)), Some(o)) =
                    (row.as_mut().and_then(Iterator::next), o.as_object())
                else {
                    continue;
                };
                let key = self.key(depth, i, k)?;
                let value = match item {
                    Json::String(text) => self.column_string(i, text)?,
                    _ => self.value(item, depth + 1)?,
                };
                values.push(value.clone());
                put(o, key, value)?;
            }
        }
        Ok(())
    }

    /// The atom of key `k`, the `i`th of an object at `depth`, and whether it may be assigned.
    fn key(&mut self, depth: usize, i: usize, k: &'a str) -> rquickjs::Result<(Atom<'js>, bool)> {
        if self.keys.len() <= depth {
            self.keys.resize_with(depth + 1, Vec::new);
        }
        if let Some((_, atom, plain)) = self.keys[depth].get(i).filter(|(text, _, _)| *text == k) {
            return Ok((atom.clone(), *plain));
        }
        let atom = Atom::from_str(self.ctx.clone(), k)?;
        let plain = assignable(k);
        let seen = &mut self.keys[depth];
        seen.truncate(i);
        seen.push((k, atom.clone(), plain));
        Ok((atom, plain))
    }
}

/// Gives `o` property `key` (see [`assignable`]).
fn put<'js>(o: &Object<'js>, key: (Atom<'js>, bool), value: Value<'js>) -> rquickjs::Result<()> {
    match key {
        (atom, true) => o.set(atom, value),
        (atom, false) => o.prop(
            atom,
            Property::from(value).writable().enumerable().configurable(),
        ),
    }
}

/// A JS value as `JSON.stringify` would give it (`undefined`, functions and symbols: `None`).
/// `max_bytes` bounds the result's size as JSON text, roughly. `input`: what
/// [`to_js_input`] made of a hook's input and the input's rows, to copy the unchanged fields
/// of the result's `rows` from (none for anything else).
pub(crate) fn from_js<'js>(
    ctx: &Ctx<'js>,
    v: Value<'js>,
    max_bytes: usize,
    input: (&Made<'js>, &[Json]),
) -> Result<(Option<Json>, Vec<FromInput>), String> {
    let mut walk = Walk {
        to_json: Atom::from_str(ctx.clone(), "toJSON").map_err(|e| e.to_string())?,
        bytes: 0,
        max_bytes,
        keys: Vec::new(),
        reuse: Reuse {
            made: input.0,
            rows: input.1,
            index: None,
            used: Vec::new(),
        },
        moved: Vec::new(),
    };
    let v = walk.value(v, Key::Name(""), 0)?;
    Ok((v, walk.moved))
}

/// A row of a hook's result that is an input row with some fields changed: `rows[at]` of the
/// result is the input's `rows[row]`, `changed` fields replaced (`None`: left out), `added`
/// ones appended. Applied by [`put_back`] once the execution is over for good, moving the
/// input row rather than copying it.
#[derive(Debug)]
pub(crate) struct FromInput {
    at: usize,
    row: usize,
    changed: Vec<(String, Option<Json>)>,
    added: Vec<(String, Json)>,
}

/// Moves the input rows `moved` names into the result's `rows` (see [`FromInput`]).
pub(crate) fn put_back(out: &mut Json, input: &mut Json, moved: Vec<FromInput>) {
    let (Some(Json::Array(rows)), Some(Json::Array(input))) =
        (out.get_mut("rows"), input.get_mut("rows"))
    else {
        return;
    };
    for m in moved {
        let (Some(slot), Some(from)) = (rows.get_mut(m.at), input.get_mut(m.row)) else {
            continue;
        };
        let mut row = std::mem::take(from);
        if let Json::Object(fields) = &mut row {
            for (name, value) in m.changed {
                match value {
                    Some(v) => {
                        if let Some(field) = fields.get_mut(&name) {
                            *field = v;
                        }
                    }
                    // `undefined` or a function: JSON leaves the field out.
                    None => {
                        fields.shift_remove(&name);
                    }
                }
            }
            fields.extend(m.added);
        }
        *slot = row;
    }
}

/// The input rows a hook's result may hand back.
struct Reuse<'r, 'js> {
    made: &'r Made<'js>,
    rows: &'r [Json],
    /// Made row object -> its index, built when a row is not found at its own place.
    index: Option<HashMap<Value<'js>, usize>>,
    /// Input rows already handed back (a second time, a row is read).
    used: Vec<bool>,
}

/// The property name (or index) `toJSON` is called with.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a str),
    Index(usize),
}

struct Walk<'r, 'js> {
    to_json: Atom<'js>,
    bytes: usize,
    max_bytes: usize,
    /// Per depth, the property names of the last object read there, as atoms and as text:
    /// rows have the same keys, and an atom's text costs more to get than to copy.
    keys: Vec<Vec<(Atom<'js>, String)>>,
    reuse: Reuse<'r, 'js>,
    moved: Vec<FromInput>,
}

impl<'js> Walk<'_, 'js> {
    /// Makes `keys[depth][i]` the name `atom` stands for.
    fn learn_key(&mut self, depth: usize, i: usize, atom: Atom<'js>) -> Result<(), String> {
        if self.keys.len() <= depth {
            self.keys.resize_with(depth + 1, Vec::new);
        }
        if self.keys[depth].get(i).is_some_and(|(a, _)| *a == atom) {
            return Ok(());
        }
        let k = atom.to_string().map_err(|e| e.to_string())?;
        let seen = &mut self.keys[depth];
        seen.truncate(i);
        seen.push((atom, k));
        Ok(())
    }

    /// Row `i` of a hook's `rows`, when it is one of the input's row objects (met for the first
    /// time) and has no `toJSON`: `Json::Null` standing for the input row, with the fields that
    /// changed or were added recorded in `moved`, when its fields still begin with the input's,
    /// in order; else the row read whole. `None`: read it as any value.
    fn hook_row(
        &mut self,
        i: usize,
        item: &Value<'js>,
        depth: usize,
        at: usize,
    ) -> Result<Option<Json>, String> {
        let reuse = &mut self.reuse;
        let made = reuse.made;
        if !item.is_object() {
            return Ok(None);
        }
        let j = match made.rows.get(i) {
            Some((o, _)) if o == item => i,
            _ if made.rows.is_empty() => return Ok(None),
            _ => {
                let index = reuse.index.get_or_insert_with(|| {
                    made.rows
                        .iter()
                        .enumerate()
                        .filter(|(_, (o, _))| o.is_object())
                        .map(|(j, (o, _))| (o.clone(), j))
                        .collect()
                });
                match index.get(item) {
                    Some(&j) => j,
                    None => return Ok(None),
                }
            }
        };
        let (Some((_, fields)), Some(Json::Object(input)), Some(o)) =
            (made.rows.get(j), reuse.rows.get(j), item.as_object())
        else {
            return Ok(None);
        };
        if reuse.used.len() < made.rows.len() {
            reuse.used.resize(made.rows.len(), false);
        }
        if std::mem::replace(&mut reuse.used[j], true) {
            return Ok(None);
        }
        // A `toJSON` decides what the row becomes.
        match o.get::<_, Value>(self.to_json.clone()) {
            Ok(f) if f.is_function() => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(thrown(o.ctx(), e)),
        }
        self.spend(8)?;
        // The names first, as `JSON.stringify` takes them; each value is read when its turn
        // comes (a getter runs then, after the fields before it were written).
        let n = self.learn_keys(o, depth)?;
        let in_order = n >= input.len()
            && input
                .keys()
                .zip(&self.keys[depth])
                .all(|(name, (_, k))| name == k);
        if !in_order {
            return self.fields(o, n, depth).map(Some);
        }
        let mut patch = FromInput {
            at,
            row: j,
            changed: Vec::new(),
            added: Vec::new(),
        };
        for (p, (name, was)) in input.iter().enumerate() {
            let value = self.field(o, depth, p)?;
            let same = matches!(
                value.type_of(),
                Type::String | Type::Int | Type::Bool | Type::Null
            ) && fields.get(p) == Some(&value);
            if same {
                self.spend(8 + name.len() + was.as_str().map_or(0, str::len))?;
            } else {
                let v = self.value(value, Key::Name(name), depth + 1)?;
                if v.is_some() {
                    self.spend(name.len())?;
                }
                patch.changed.push((name.clone(), v));
            }
        }
        for p in input.len()..n {
            let value = self.field(o, depth, p)?;
            let k = self.keys[depth][p].1.clone();
            if let Some(v) = self.value(value, Key::Name(&k), depth + 1)? {
                self.spend(k.len())?;
                patch.added.push((k, v));
            }
        }
        self.moved.push(patch);
        Ok(Some(Json::Null))
    }

    /// Learns the names of an object's own enumerable properties into `keys[depth]`; how many.
    fn learn_keys(&mut self, o: &Object<'js>, depth: usize) -> Result<usize, String> {
        // `keys[depth]` exists afterwards even for an object without keys.
        if self.keys.len() <= depth {
            self.keys.resize_with(depth + 1, Vec::new);
        }
        let mut n = 0;
        for (i, atom) in o.keys::<Atom<'js>>().enumerate() {
            self.learn_key(depth, i, atom.map_err(|e| thrown(o.ctx(), e))?)?;
            n = i + 1;
        }
        Ok(n)
    }

    /// The value of property `keys[depth][i]` of `o`.
    fn field(&self, o: &Object<'js>, depth: usize, i: usize) -> Result<Value<'js>, String> {
        o.get::<_, Value<'js>>(self.keys[depth][i].0.clone())
            .map_err(|e| thrown(o.ctx(), e))
    }

    /// An object's first `n` fields (named in `keys[depth]`) as JSON, in order.
    fn fields(&mut self, o: &Object<'js>, n: usize, depth: usize) -> Result<Json, String> {
        let mut out = Map::with_capacity(n);
        for i in 0..n {
            let item = self.field(o, depth, i)?;
            let k = self.keys[depth][i].1.clone();
            if let Some(item) = self.value(item, Key::Name(&k), depth + 1)? {
                self.spend(k.len())?;
                out.insert(k, item);
            }
        }
        Ok(Json::Object(out))
    }

    fn spend(&mut self, n: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(format!(
                "the script's result is larger than {} MiB as JSON",
                self.max_bytes >> 20
            ));
        }
        Ok(())
    }

    fn value(&mut self, v: Value<'js>, key: Key<'_>, depth: usize) -> Result<Option<Json>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "the script's result is nested deeper than {MAX_DEPTH} levels (or is circular)"
            ));
        }
        let v = match v.as_object() {
            Some(o) => match o.get::<_, Value>(self.to_json.clone()) {
                Ok(f) if f.is_function() => {
                    let f = Function::from_value(f).map_err(|e| e.to_string())?;
                    let ctx = o.ctx().clone();
                    let key = match key {
                        Key::Name(k) => rquickjs::String::from_str(ctx.clone(), k),
                        Key::Index(i) => rquickjs::String::from_str(ctx.clone(), &i.to_string()),
                    }
                    .map_err(|e| e.to_string())?;
                    f.call::<_, Value>((This(o.clone()), key))
                        .map_err(|e| thrown(&ctx, e))?
                }
                Ok(_) => v,
                Err(e) => return Err(thrown(o.ctx(), e)),
            },
            None => v,
        };
        self.spend(8)?;
        Ok(Some(match v.type_of() {
            Type::Uninitialized
            | Type::Undefined
            | Type::Symbol
            | Type::Function
            | Type::Constructor
            | Type::Module => return Ok(None),
            Type::Null => Json::Null,
            Type::Bool => Json::Bool(v.as_bool().unwrap_or(false)),
            Type::Int => Json::from(v.as_int().unwrap_or(0)),
            Type::Float => number(v.as_float().unwrap_or(f64::NAN)),
            Type::String => {
                let s = v
                    .as_string()
                    .map(|s| s.to_string())
                    .transpose()
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                self.spend(s.len())?;
                Json::String(s)
            }
            Type::BigInt => return Err("TypeError: a BigInt cannot be made JSON".into()),
            Type::Array => {
                let a = v.as_array().ok_or("not an array")?;
                let mut out = Vec::with_capacity(a.len().min(1 << 16));
                let hook_rows = depth == 1 && matches!(key, Key::Name("rows"));
                for i in 0..a.len() {
                    let item: Value = a.get(i).map_err(|e| thrown(a.ctx(), e))?;
                    if hook_rows && let Some(row) = self.hook_row(i, &item, depth + 1, out.len())? {
                        out.push(row);
                        continue;
                    }
                    let item = self.value(item, Key::Index(i), depth + 1)?;
                    out.push(item.unwrap_or(Json::Null));
                }
                Json::Array(out)
            }
            _ => {
                let o = v.as_object().ok_or("not an object")?;
                let n = self.learn_keys(o, depth)?;
                self.fields(o, n, depth)?
            }
        }))
    }
}

/// A float as `JSON.stringify` writes it: whole numbers without a fraction, non-finite as null.
fn number(f: f64) -> Json {
    if !f.is_finite() {
        return Json::Null;
    }
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        return Json::from(f as i64);
    }
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// The message of an exception thrown while reading the result (a getter, a `toJSON`).
fn thrown(ctx: &Ctx<'_>, e: rquickjs::Error) -> String {
    match e {
        rquickjs::Error::Exception => {
            let v = ctx.catch();
            v.as_object()
                .and_then(|o| o.get::<_, rquickjs::Coerced<String>>("message").ok())
                .map(|m| m.0)
                .or_else(|| v.get::<rquickjs::Coerced<String>>().ok().map(|m| m.0))
                .unwrap_or_else(|| "an exception".into())
        }
        other => other.to_string(),
    }
}
