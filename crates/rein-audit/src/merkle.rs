//! RFC 6962 Merkle trees over SHA-256: leaf `H(0x00 ‖ data)`, node `H(0x01 ‖ left ‖ right)`, the
//! tree hash of any prefix, and inclusion and consistency proofs with their verification.
//!
//! [`Tree`] keeps every complete subtree's hash by level, so the hash of any range, and so any
//! proof, costs O(log² n) lookups once the leaves are in; [`Frontier`] is the compact form a
//! writer keeps to extend the tree and know its root without the leaves.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `H(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `H(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The tree hash of no leaves: `H()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// A tree over known leaf hashes, with every complete subtree's hash kept by level.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[k][i]` is the hash of leaves `i·2^k .. (i+1)·2^k`.
    levels: Vec<Vec<Hash>>,
}

impl Default for Tree {
    /// An empty tree (with its level of leaves, which every method reads).
    fn default() -> Tree {
        Tree::new()
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree {
            levels: vec![Vec::new()],
        }
    }

    /// Appends a leaf (its hash), completing whatever subtrees it completes.
    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut k = 0;
        while self.levels[k].len().is_multiple_of(2) {
            let n = self.levels[k].len();
            let parent = node_hash(&self.levels[k][n - 2], &self.levels[k][n - 1]);
            if self.levels.len() == k + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[k + 1].push(parent);
            k += 1;
        }
    }

    /// How many leaves.
    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The hash of leaf `i`.
    pub fn leaf(&self, i: u64) -> Option<Hash> {
        self.levels[0].get(i as usize).copied()
    }

    /// MTH of leaves `lo..hi` (hi ≤ len).
    fn range(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(lo >> k) as usize];
        }
        let k = split(n);
        node_hash(&self.range(lo, lo + k), &self.range(lo + k, hi))
    }

    /// The tree hash of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        (size <= self.len()).then(|| self.range(0, size))
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.range(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.range(lo, lo + k));
        }
    }

    /// The consistency proof between the trees of the first `old` and `new` leaves (§2.1.2).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old == 0 || old > new || new > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.subproof(old, 0, new, true, &mut proof);
        Some(proof)
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push(self.range(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, whole, out);
            out.push(self.range(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.range(lo, lo + k));
        }
    }
}

/// Checks an inclusion proof: leaf `index` with hash `leaf` is in the tree of `size` leaves
/// whose hash is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Checks a consistency proof between a tree of `old` leaves with hash `old_root` and one of
/// `new` leaves with hash `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && f_r == *old_root && s_r == *new_root
}

/// The compact state a writer keeps: the roots of the perfect subtrees that make up the tree,
/// largest first. Enough to append and to compute the root, without the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree hash.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return empty_root();
        };
        for (_, peak) in iter {
            acc = node_hash(peak, &acc);
        }
        acc
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses 32 bytes of hex.
pub fn unhex32(text: &str) -> Option<Hash> {
    let bytes = unhex(text)?;
    bytes.try_into().ok()
}

/// Parses hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference definition, straight from RFC 6962.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_and_proofs_agree_with_the_rfc_for_every_size_up_to_70() {
        let leaves: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut tree = Tree::new();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            tree.push(*leaf);
            frontier.push(*leaf);
            let n = i as u64 + 1;
            assert_eq!(frontier.root(), mth(&leaves[..=i]), "frontier root at {n}");
        }
        for n in 1..=70u64 {
            let root = tree.root(n).unwrap();
            assert_eq!(root, mth(&leaves[..n as usize]), "root at {n}");
            for i in 0..n {
                let proof = tree.inclusion_proof(i, n).unwrap();
                assert!(
                    verify_inclusion(i, n, &leaves[i as usize], &proof, &root),
                    "inclusion {i} in {n}"
                );
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(i, n, &other, &proof, &root));
                if n > 1 {
                    assert!(
                        !verify_inclusion((i + 1) % n, n, &leaves[i as usize], &proof, &root)
                            || (i + 1) % n == i
                    );
                }
            }
            for m in 1..=n {
                let proof = tree.consistency_proof(m, n).unwrap();
                let old = tree.root(m).unwrap();
                assert!(
                    verify_consistency(m, n, &old, &root, &proof),
                    "consistency {m} -> {n}"
                );
                if m < n {
                    let forged = leaf_hash(b"forged");
                    assert!(
                        !verify_consistency(m, n, &forged, &root, &proof),
                        "a forged old root fails {m} -> {n}"
                    );
                    assert!(
                        !verify_consistency(m, n, &old, &forged, &proof),
                        "a forged new root fails {m} -> {n}"
                    );
                }
            }
        }
        assert!(
            tree.inclusion_proof(5, 3).is_none()
                && tree.consistency_proof(0, 3).is_none()
                && tree.root(71).is_none()
        );
    }

    #[test]
    fn hex_round_trips() {
        let h = leaf_hash(b"x");
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex32("ab"), None);
    }
}
