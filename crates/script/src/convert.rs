//! JSON values into QuickJS values and back, built directly instead of through JSON text: a
//! hook's rows cross twice per execution, and `JSON.parse`/`JSON.stringify` with serde on the
//! other side were two thirds of a trivial hook's cost.
//!
//! `to_js` gives what `JSON.parse` would (own, writable, enumerable data properties, so a key
//! such as `__proto__` is an ordinary property). `from_js` gives what `JSON.stringify` would,
//! `toJSON` included (a `Date` becomes its ISO string), bounded in depth and size because the
//! result lives outside the runtime's memory limit.

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
    }
    .value(v, 0)
}

/// Builds JS values; `keys[depth]` remembers the property names (as atoms) of the last object
/// made at each depth: rows have the same keys in the same order, and finding an atom by its
/// text costs more than comparing the text with the last one.
struct ToJs<'a, 'js> {
    ctx: &'a Ctx<'js>,
    keys: Vec<Vec<(&'a str, Atom<'js>)>>,
}

impl<'a, 'js> ToJs<'a, 'js> {
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
            Json::Object(m) => {
                let o = Object::new(ctx.clone())?;
                if self.keys.len() <= depth {
                    self.keys.resize_with(depth + 1, Vec::new);
                }
                for (i, (k, item)) in m.iter().enumerate() {
                    let value = self.value(item, depth + 1)?;
                    let known = self.keys[depth]
                        .get(i)
                        .filter(|(text, _)| *text == k.as_str())
                        .map(|(_, atom)| atom.clone());
                    let atom = match known {
                        Some(atom) => atom,
                        None => {
                            let atom = Atom::from_str(ctx.clone(), k)?;
                            let seen = &mut self.keys[depth];
                            seen.truncate(i);
                            seen.push((k.as_str(), atom.clone()));
                            atom
                        }
                    };
                    let p = Property::from(value).writable().enumerable().configurable();
                    o.prop(atom, p)?;
                }
                o.into_value()
            }
        })
    }
}

/// A JS value as `JSON.stringify` would give it (`undefined`, functions and symbols: `None`).
/// `max_bytes` bounds the result's size as JSON text, roughly.
pub(crate) fn from_js<'js>(
    ctx: &Ctx<'js>,
    v: Value<'js>,
    max_bytes: usize,
) -> Result<Option<Json>, String> {
    let mut walk = Walk {
        to_json: Atom::from_str(ctx.clone(), "toJSON").map_err(|e| e.to_string())?,
        bytes: 0,
        max_bytes,
        keys: Vec::new(),
    };
    walk.value(v, Key::Name(""), 0)
}

/// The property name (or index) `toJSON` is called with.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a str),
    Index(usize),
}

struct Walk<'js> {
    to_json: Atom<'js>,
    bytes: usize,
    max_bytes: usize,
    /// Per depth, the property names of the last object read there, as atoms and as text:
    /// rows have the same keys, and an atom's text costs more to get than to copy.
    keys: Vec<Vec<(Atom<'js>, String)>>,
}

impl<'js> Walk<'js> {
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
                for i in 0..a.len() {
                    let item: Value = a.get(i).map_err(|e| thrown(a.ctx(), e))?;
                    let item = self.value(item, Key::Index(i), depth + 1)?;
                    out.push(item.unwrap_or(Json::Null));
                }
                Json::Array(out)
            }
            _ => {
                let o = v.as_object().ok_or("not an object")?;
                let props = o.props::<Atom<'js>, Value<'js>>();
                let mut out = Map::with_capacity(props.len());
                if self.keys.len() <= depth {
                    self.keys.resize_with(depth + 1, Vec::new);
                }
                for (i, prop) in props.enumerate() {
                    let (atom, item) = prop.map_err(|e| thrown(o.ctx(), e))?;
                    let known = self.keys[depth]
                        .get(i)
                        .filter(|(a, _)| *a == atom)
                        .map(|(_, text)| text.clone());
                    let k = match known {
                        Some(k) => k,
                        None => {
                            let k = atom.to_string().map_err(|e| e.to_string())?;
                            let seen = &mut self.keys[depth];
                            seen.truncate(i);
                            seen.push((atom, k.clone()));
                            k
                        }
                    };
                    if let Some(item) = self.value(item, Key::Name(&k), depth + 1)? {
                        self.spend(k.len())?;
                        out.insert(k, item);
                    }
                }
                Json::Object(out)
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
