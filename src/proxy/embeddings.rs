//! `/v1/embeddings` on the wire: a batch served partly from the cache and
//! partly upstream.
//!
//! Owns the shapes of an embeddings answer: reading its vectors (JSON floats
//! or base64 little-endian float32), the stored form of one vector, the
//! request that asks the upstream only for the inputs the cache lacks, and
//! the merged answer, each vector at its input's `index`, in the encoding
//! the client asked for. It must never reorder, drop or alter a vector: a
//! vector goes back out bit for bit as it came in.

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::keying::inputs::Input;

/// One embedding vector, kept at the precision it came in: float32 when
/// every component is one (always so for base64), else float64.
#[derive(Debug, Clone, PartialEq)]
pub enum Vector {
    /// Float32 components.
    F32(Vec<f32>),
    /// Components a float32 cannot hold exactly.
    F64(Vec<f64>),
}

impl Vector {
    /// From an answer's `embedding`: a base64 string or an array of numbers.
    pub fn from_wire(v: &Value) -> Option<Vector> {
        match v {
            Value::String(s) => {
                let raw = STANDARD.decode(s).ok()?;
                if raw.len() % 4 != 0 {
                    return None;
                }
                let xs: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                // NOTE: JSON cannot carry NaN or infinity: such a vector could
                // not be served as floats, so it is not cached at all.
                xs.iter().all(|x| x.is_finite()).then_some(Vector::F32(xs))
            }
            Value::Array(items) => {
                let xs: Vec<f64> = items.iter().map(Value::as_f64).collect::<Option<_>>()?;
                if xs.iter().all(|x| f64::from(*x as f32) == *x) {
                    Some(Vector::F32(xs.into_iter().map(|x| x as f32).collect()))
                } else {
                    Some(Vector::F64(xs))
                }
            }
            _ => None,
        }
    }

    /// As an answer's `embedding`: base64 of float32 (what the upstream
    /// sends for `encoding_format: "base64"`), or an array of numbers.
    pub fn to_wire(&self, base64: bool) -> Value {
        match (self, base64) {
            (Vector::F32(xs), true) => {
                Value::String(STANDARD.encode(f32_bytes(xs.iter().copied())))
            }
            (Vector::F64(xs), true) => {
                Value::String(STANDARD.encode(f32_bytes(xs.iter().map(|x| *x as f32))))
            }
            (Vector::F32(xs), false) => numbers(xs.iter().map(|x| f64::from(*x))),
            (Vector::F64(xs), false) => numbers(xs.iter().copied()),
        }
    }

    /// The stored answer of one input: the vector and the model that made it.
    pub fn stored(&self, model: &Value) -> String {
        let mut m = Map::new();
        m.insert("object".into(), json!("embedding"));
        m.insert("model".into(), model.clone());
        match self {
            Vector::F32(_) => m.insert("embedding_f32_base64".into(), self.to_wire(true)),
            Vector::F64(_) => m.insert("embedding".into(), self.to_wire(false)),
        };
        Value::Object(m).to_string()
    }

    /// A stored answer back: the vector and its model; None if it is not one.
    pub fn from_stored(answer: &str) -> Option<(Vector, Value)> {
        let v: Value = serde_json::from_str(answer).ok()?;
        let model = v.get("model").cloned().unwrap_or(Value::Null);
        let vector = match (v.get("embedding_f32_base64"), v.get("embedding")) {
            (Some(b), _) if b.is_string() => Vector::from_wire(b)?,
            (None, Some(a)) if a.is_array() => Vector::from_wire(a)?,
            _ => return None,
        };
        Some((vector, model))
    }
}

fn f32_bytes(xs: impl Iterator<Item = f32>) -> Vec<u8> {
    xs.flat_map(f32::to_le_bytes).collect()
}

fn numbers(xs: impl Iterator<Item = f64>) -> Value {
    Value::Array(
        xs.map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
            .collect(),
    )
}

/// The inputs of a request with repeats folded: `unique` in first-seen
/// order, and for each input position the index of its unique input.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Each distinct input once.
    pub unique: Vec<Input>,
    /// Input position → index into `unique`.
    pub at: Vec<usize>,
}

impl Batch {
    /// Folds the repeats of `inputs`.
    pub fn of(inputs: Vec<Input>) -> Batch {
        let mut unique: Vec<Input> = Vec::new();
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let mut at = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (tag, text) = input.tagged();
            let id = format!("{tag}:{text}");
            let next = unique.len();
            let i = *seen.entry(id).or_insert(next);
            if i == next {
                unique.push(input);
            }
            at.push(i);
        }
        Batch { unique, at }
    }
}

/// Whether the client asked for base64 vectors.
pub fn wants_base64(body: &Value) -> bool {
    body.get("encoding_format").and_then(Value::as_str) == Some("base64")
}

/// The request body that asks the upstream for `inputs` only, everything
/// else as the client sent it.
pub fn request_for(body: &Value, inputs: &[&Input]) -> Option<Bytes> {
    let mut b = body.as_object()?.clone();
    b.insert(
        "input".into(),
        Value::Array(inputs.iter().map(|i| i.value().clone()).collect()),
    );
    serde_json::to_vec(&Value::Object(b)).ok().map(Bytes::from)
}

/// An upstream embeddings answer, read.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its `model`.
    pub model: Value,
    /// One vector per input asked for, in input order.
    pub vectors: Vec<Vector>,
    /// Its `usage`, as billed.
    pub usage: Value,
}

/// Reads an upstream answer to a request of `expected` inputs: exactly one
/// vector per index `0..expected`, or it is refused (and nothing cached).
pub fn read_answer(body: &[u8], expected: usize) -> Result<Answer, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON")?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err("an error");
    }
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no data list")?;
    if data.len() != expected {
        return Err("not one vector per input");
    }
    let mut slots: Vec<Option<Vector>> = vec![None; expected];
    for (n, item) in data.iter().enumerate() {
        let index = match item.get("index") {
            Some(i) => i.as_u64().ok_or("a bad index")? as usize,
            None => n,
        };
        let slot = slots.get_mut(index).ok_or("an index out of range")?;
        if slot.is_some() {
            return Err("an index twice");
        }
        let e = item.get("embedding").ok_or("an item without a vector")?;
        *slot = Some(Vector::from_wire(e).ok_or("a vector that does not read")?);
    }
    Ok(Answer {
        model: v.get("model").cloned().unwrap_or(Value::Null),
        vectors: slots.into_iter().collect::<Option<_>>().ok_or("a gap")?,
        usage: v.get("usage").cloned().unwrap_or(Value::Null),
    })
}

/// The answer to the client: `vectors` in input order, each at its index.
pub fn merged(model: &Value, vectors: &[&Vector], base64: bool, usage: Value) -> Bytes {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v.to_wire(base64)}))
        .collect();
    let body = json!({"object": "list", "data": data, "model": model, "usage": usage});
    Bytes::from(body.to_string())
}

/// What nothing upstream costs: the usage of an answer served whole from
/// the cache.
pub fn no_usage() -> Value {
    json!({"prompt_tokens": 0, "total_tokens": 0})
}

/// A generous bound on the bytes of an upstream answer carrying `vectors`
/// vectors of `dims` components: a float is at most 24 bytes of JSON, a
/// base64 float32 under 6.
pub fn answer_bound(vectors: usize, dims: usize, base64: bool) -> usize {
    let per = if base64 { 6 } else { 24 };
    vectors.saturating_mul(dims.saturating_mul(per).saturating_add(96)) + 1024
}

impl Vector {
    /// Its number of components.
    pub fn len(&self) -> usize {
        match self {
            Vector::F32(x) => x.len(),
            Vector::F64(x) => x.len(),
        }
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keying::inputs;

    #[test]
    fn a_vector_goes_back_out_bit_for_bit_in_either_encoding() {
        let xs = [0.1f32, -0.006_929_283_5, 1.0e-7, 3.5];
        let floats = numbers(xs.iter().map(|x| f64::from(*x)));
        let b64 = Value::String(STANDARD.encode(f32_bytes(xs.iter().copied())));
        for wire in [&floats, &b64] {
            let v = Vector::from_wire(wire).unwrap();
            assert_eq!(v, Vector::F32(xs.to_vec()));
            assert_eq!(&v.to_wire(false), &floats);
            assert_eq!(&v.to_wire(true), &b64);
            let (back, model) = Vector::from_stored(&v.stored(&json!("m"))).unwrap();
            assert_eq!(back, v);
            assert_eq!(model, "m");
        }
        // Components a float32 cannot hold stay float64 as floats.
        let fine = json!([0.1, 0.2]);
        let v = Vector::from_wire(&fine).unwrap();
        assert!(matches!(v, Vector::F64(_)));
        assert_eq!(v.to_wire(false), fine);
        assert_eq!(Vector::from_stored(&v.stored(&json!("m"))).unwrap().0, v);
        // Not vectors.
        for bad in [json!("%%%"), json!("AAA="), json!([1, "a"]), json!({})] {
            assert!(Vector::from_wire(&bad).is_none(), "{bad}");
        }
        let nan = Value::String(STANDARD.encode(f32::NAN.to_le_bytes()));
        assert!(Vector::from_wire(&nan).is_none());
    }

    #[test]
    fn repeats_fold_and_positions_point_back() {
        let b = Batch::of(inputs::of(Some(&json!(["a", "b", "a", "c", "b"]))).unwrap());
        assert_eq!(b.unique.len(), 3);
        assert_eq!(b.at, vec![0, 1, 0, 2, 1]);
    }

    #[test]
    fn an_answer_is_read_by_index_and_refused_when_it_does_not_fit() {
        let body = json!({"object": "list", "model": "e", "usage": {"prompt_tokens": 4, "total_tokens": 4},
            "data": [{"object": "embedding", "index": 1, "embedding": [2.0]},
                     {"object": "embedding", "index": 0, "embedding": [1.0]}]})
        .to_string();
        let a = read_answer(body.as_bytes(), 2).unwrap();
        assert_eq!(
            a.vectors,
            vec![Vector::F32(vec![1.0]), Vector::F32(vec![2.0])]
        );
        assert_eq!(a.usage["prompt_tokens"], 4);
        assert!(read_answer(body.as_bytes(), 3).is_err());
        let twice = body.replace("\"index\":0", "\"index\":1");
        assert!(read_answer(twice.as_bytes(), 2).is_err());
        assert!(read_answer(b"{\"error\":{\"message\":\"x\"}}", 0).is_err());
        assert!(read_answer(b"not json", 1).is_err());
    }

    #[test]
    fn the_merged_answer_numbers_every_position() {
        let (a, b) = (Vector::F32(vec![1.0]), Vector::F32(vec![2.0]));
        let out: Value =
            serde_json::from_slice(&merged(&json!("e"), &[&a, &b, &a], false, no_usage())).unwrap();
        assert_eq!(out["object"], "list");
        let data = out["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
        }
        assert_eq!(data[2]["embedding"], json!([1.0]));
        assert_eq!(out["usage"]["total_tokens"], 0);
        let asked = request_for(
            &json!({"model": "e", "input": ["x", "y"], "dimensions": 8}),
            &[&inputs::of(Some(&json!("y"))).unwrap()[0]],
        )
        .unwrap();
        let asked: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(
            asked,
            json!({"model": "e", "input": ["y"], "dimensions": 8})
        );
    }
}
