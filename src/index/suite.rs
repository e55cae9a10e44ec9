//! The behaviours every [`VectorIndex`] has, one function each, run against
//! usearch, brute force and Milvus alike (`index_suite!`): search filtered to
//! a partition, agreement with brute force on random vectors, replace and
//! remove, tenants apart, wrong sizes refused.
//!
//! A shared index (Milvus) makes writes searchable a moment later: each
//! check after a write waits for it (up to 10 s); an index in memory is
//! checked once.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{BruteIndex, IndexError, VectorIndex};

/// Dimensions of the suite's vectors.
pub(crate) const DIMS: usize = 32;

/// Opens one tenant's view of the index under test (every call of one
/// fixture reaches the same index).
pub(crate) trait Fixture {
    fn open(&self, tenant: &str) -> std::sync::Arc<dyn VectorIndex>;
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `n` random unit vectors.
pub(crate) fn random(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| unit((0..DIMS).map(|_| rng.random_range(-1.0f32..1.0)).collect()))
        .collect()
}

/// Runs `check` until it passes: once for an index in memory; for a shared
/// one, after its queued writes, for up to 10 s.
fn eventually(idx: &dyn VectorIndex, check: impl Fn() -> Result<(), String>) {
    if !idx.shared() {
        if let Err(e) = check() {
            panic!("{e}");
        }
        return;
    }
    assert_eq!(idx.flush(Duration::from_secs(10)), 0, "writes left queued");
    let t0 = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("after 10 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn ids(found: &[(u64, f32)]) -> Vec<u64> {
    found.iter().map(|(id, _)| *id).collect()
}

pub(crate) fn search_is_filtered_to_the_partition(f: &dyn Fixture) {
    let idx = f.open("t");
    let vs = random(60, 1);
    for (i, v) in vs.iter().enumerate() {
        idx.add(i as u64, (i % 3) as u64, v).unwrap();
    }
    eventually(idx.as_ref(), || {
        let got = idx.search(&vs[5], Some(2), 5).map_err(|e| e.to_string())?;
        if got.len() != 5 || got.iter().any(|(id, _)| id % 3 != 2) {
            return Err(format!("partition 2 only, five of them: {got:?}"));
        }
        if got[0].0 != 5 || (got[0].1 - 1.0).abs() > 1e-3 {
            return Err(format!("its own vector first, at 1.0: {got:?}"));
        }
        // Another partition's nearest is not its own vector.
        let other = idx.search(&vs[5], Some(1), 3).map_err(|e| e.to_string())?;
        if other.iter().any(|(id, _)| id % 3 != 1) || other.iter().any(|(_, s)| *s > 0.999) {
            return Err(format!("partition 1 only: {other:?}"));
        }
        // Without a tag, every partition is searched.
        let any = idx.search(&vs[4], None, 1).map_err(|e| e.to_string())?;
        if ids(&any) != [4] {
            return Err(format!("any partition: {any:?}"));
        }
        // A partition with nothing in it finds nothing.
        let none = idx.search(&vs[4], Some(9), 3).map_err(|e| e.to_string())?;
        if !none.is_empty() {
            return Err(format!("an empty partition: {none:?}"));
        }
        Ok(())
    });
}

pub(crate) fn agrees_with_brute_force(f: &dyn Fixture) {
    let idx = f.open("t");
    let brute = BruteIndex::default();
    let vs = random(1000, 2);
    for (i, v) in vs.iter().enumerate() {
        idx.add(i as u64, (i % 4) as u64, v).unwrap();
        brute.add(i as u64, (i % 4) as u64, v).unwrap();
    }
    // Probes: stored vectors nudged, and fresh random ones.
    let mut rng = StdRng::seed_from_u64(3);
    let mut probes: Vec<(u64, Vec<f32>)> = (0..30)
        .map(|i| {
            let base = &vs[rng.random_range(0..vs.len())];
            let v = unit(
                base.iter()
                    .map(|x| x + rng.random_range(-0.1f32..0.1))
                    .collect(),
            );
            (i % 4, v)
        })
        .collect();
    probes.extend(
        random(20, 4)
            .into_iter()
            .enumerate()
            .map(|(i, v)| ((i % 4) as u64, v)),
    );
    eventually(idx.as_ref(), || {
        for (tag, p) in &probes {
            let got = idx.search(p, Some(*tag), 5).map_err(|e| e.to_string())?;
            let want = brute.search(p, Some(*tag), 5).map_err(|e| e.to_string())?;
            if ids(&got) != ids(&want) {
                return Err(format!("tag {tag}: {got:?}, brute force {want:?}"));
            }
            for ((_, a), (_, b)) in got.iter().zip(&want) {
                if (a - b).abs() > 1e-3 {
                    return Err(format!("similarities differ: {got:?} against {want:?}"));
                }
            }
        }
        Ok(())
    });
}

pub(crate) fn replace_and_remove(f: &dyn Fixture) {
    let idx = f.open("t");
    let vs = random(3, 5);
    idx.add(1, 1, &vs[0]).unwrap();
    idx.add(2, 1, &vs[2]).unwrap();
    idx.add(1, 1, &vs[1]).unwrap();
    eventually(idx.as_ref(), || {
        let got = idx.search(&vs[1], Some(1), 5).map_err(|e| e.to_string())?;
        if got.first().map(|r| r.0) != Some(1) || (got[0].1 - 1.0).abs() > 1e-3 {
            return Err(format!("the new vector: {got:?}"));
        }
        if got.iter().filter(|(id, _)| *id == 1).count() != 1 {
            return Err(format!("one row of id 1: {got:?}"));
        }
        // The old vector is gone: id 1 is as far from it as its new one is.
        let old = idx.search(&vs[0], Some(1), 5).map_err(|e| e.to_string())?;
        let want = super::dot(&vs[0], &vs[1]);
        match old.iter().find(|(id, _)| *id == 1) {
            Some((_, s)) if (s - want).abs() < 1e-3 => Ok(()),
            found => Err(format!("id 1 from its old vector: {found:?}, want {want}")),
        }
    });
    idx.remove(1).unwrap();
    idx.remove(77).unwrap();
    eventually(idx.as_ref(), || {
        let got = idx.search(&vs[1], Some(1), 5).map_err(|e| e.to_string())?;
        if ids(&got) != [2] {
            return Err(format!("only id 2 left: {got:?}"));
        }
        Ok(())
    });
    assert!(idx.contains(2));
    assert!(!idx.contains(1));
}

pub(crate) fn tenants_do_not_see_each_other(f: &dyn Fixture) {
    let (a, b) = (f.open("a"), f.open("b"));
    let vs = random(4, 6);
    a.add(10, 1, &vs[0]).unwrap();
    b.add(11, 1, &vs[1]).unwrap();
    eventually(a.as_ref(), || {
        let ga = a.search(&vs[1], Some(1), 5).map_err(|e| e.to_string())?;
        let gb = b.search(&vs[0], None, 5).map_err(|e| e.to_string())?;
        if ids(&ga) != [10] || ids(&gb) != [11] {
            return Err(format!("a sees {ga:?}, b sees {gb:?}"));
        }
        Ok(())
    });
}

pub(crate) fn wrong_sizes_are_refused(f: &dyn Fixture) {
    let idx = f.open("t");
    assert!(matches!(
        idx.add(1, 1, &[1.0, 0.0]),
        Err(IndexError::Dims { .. })
    ));
    assert!(matches!(
        idx.search(&[1.0], None, 1),
        Err(IndexError::Dims { .. })
    ));
}

/// Runs every behaviour against the fixture `$make` builds (one per test).
macro_rules! index_suite {
    ($make:expr) => {
        $crate::index::suite::index_suite!(@tests $make;
            search_is_filtered_to_the_partition,
            agrees_with_brute_force,
            replace_and_remove,
            tenants_do_not_see_each_other,
            wrong_sizes_are_refused,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        mod index_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let fixture = ($make)();
                    $crate::index::suite::$name(&fixture);
                }
            )*
        }
    };
}
pub(crate) use index_suite;
