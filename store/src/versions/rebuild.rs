//! Rebuilding a version by a recoverability route: from its keyframe
//! chunks, a delta chain, or by replaying its round's kept updates.

use super::*;
use convoy_shared::strategy::fold::{decode_kept, kept_header};
use convoy_shared::strategy::robust::{self, Member, Rule};
use convoy_shared::strategy::server::{OptState, ServerOpt};

/// Most update values a replay holds at once.
const REPLAY_MEMORY_BYTES: usize = 256 << 20;

impl Store {
    /// Rebuilds a version by `route`, checking it hashes to its id.
    pub fn rebuild(&self, hex: &str, route: Route) -> Result<StoredVersion, StoreError> {
        self.rebuild_cached(hex, route, &mut HashMap::new())
    }

    /// [`Store::rebuild`] reusing (and filling) `cache` of versions already
    /// rebuilt by the same route.
    pub fn rebuild_cached(
        &self,
        hex: &str,
        route: Route,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<StoredVersion, StoreError> {
        let meta = self.meta(hex)?;
        let params = match route {
            Route::Replay => self.replay_line(hex, cache)?,
            _ => self.materialise(hex, route, cache)?,
        };
        if !meta
            .row
            .manifest
            .verifies(&params, &meta.spec, &meta.row.task)
        {
            let got = version::manifest_of(
                &params,
                &meta.spec,
                &meta.row.task,
                &meta.row.manifest.provenance,
            );
            let chunk = got
                .chunks
                .iter()
                .zip(&meta.row.manifest.chunks)
                .position(|(a, b)| a != b);
            return Err(self.corrupt(
                hex,
                match chunk {
                    Some(i) => format!("rebuilt weights differ from the version in chunk {i}"),
                    None => "rebuilt weights do not hash to the version id".into(),
                },
            ));
        }
        cache.insert(hex.to_string(), params.clone());
        Ok(StoredVersion {
            round: meta.row.round,
            parent: meta.row.manifest.provenance.parent,
            manifest: meta.row.manifest,
            spec: meta.spec,
            task: meta.row.task,
            params,
        })
    }

    /// A keyframe's weights from its chunks, each checked against its hash.
    pub(super) fn keyframe_weights(
        &self,
        hex: &str,
        meta: &VersionMeta,
    ) -> Result<ParamSet, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT vc.idx, vc.hash, c.bytes FROM version_chunks vc LEFT JOIN chunks c ON c.hash = vc.hash
             WHERE vc.version = ?1 ORDER BY vc.idx",
        )?;
        let rows = stmt.query_map([hex], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })?;
        let mut bytes = Vec::with_capacity(meta.row.manifest.total_len as usize);
        let mut count = 0;
        for row in rows {
            let (idx, hash, data) = row?;
            let data = data.ok_or_else(|| self.corrupt(hex, format!("chunk {idx} is missing")))?;
            if version::chunk_hash(&data)[..] != hash[..]
                || meta.row.manifest.chunks.get(idx as usize).map(|h| &h[..]) != Some(&hash[..])
            {
                return Err(self.corrupt(hex, format!("chunk {idx} does not match its hash")));
            }
            bytes.extend_from_slice(&data);
            count += 1;
        }
        if count != meta.row.manifest.chunks.len() {
            return Err(self.corrupt(
                hex,
                format!(
                    "{count} of {} chunks are stored",
                    meta.row.manifest.chunks.len()
                ),
            ));
        }
        ParamSet::from_canonical_bytes(&meta.spec.layout(), &bytes)
            .map_err(|e| self.corrupt(hex, format!("weights do not decode: {e}")))
    }

    /// Weights of `hex` by the stored route, or by (a)/(b) when forced.
    pub(super) fn materialise(
        &self,
        hex: &str,
        route: Route,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<ParamSet, StoreError> {
        // walk back to something we can start from
        let mut path = Vec::new();
        let mut at = hex.to_string();
        let mut start = loop {
            if let Some(p) = cache
                .get(&at)
                .filter(|_| at != hex || route != Route::Weights)
            {
                break p.clone();
            }
            let row = self
                .version_row(&at)?
                .ok_or_else(|| self.corrupt(&at, "no such version (a parent was removed?)"))?;
            if row.kind == StorageKind::Keyframe {
                break self.keyframe_weights(&at, &self.meta(&at)?)?;
            }
            if route == Route::Weights {
                return Err(self.corrupt(
                    hex,
                    format!("stored as a {}, not as weights", row.kind.as_str()),
                ));
            }
            let parent = row.parent.clone().ok_or_else(|| {
                self.corrupt(
                    &at,
                    "not a keyframe and has no parent: nothing to rebuild it from",
                )
            })?;
            path.push(row);
            at = parent;
        };
        for row in path.into_iter().rev() {
            start = match (self.delta(&row.version)?, route) {
                (Some(delta), _) => publish::apply(&start, &delta)
                    .map_err(|e| self.corrupt(&row.version, e.to_string()))?,
                (None, Route::Deltas) => {
                    return Err(self.corrupt(
                        &row.version,
                        "has no stored delta (it is kept for replay only)",
                    ));
                }
                (None, _) => {
                    let meta = self.meta(&row.version)?;
                    if !meta.row.clean {
                        return Err(self.corrupt(
                            &row.version,
                            "a downlink residual entered its round: rebuild it by --route replay",
                        ));
                    }
                    let mut residual = ParamSet::zeros(&start.layout());
                    self.replay_step(&start, &meta, &mut residual)?
                }
            };
            cache.insert(row.version, start.clone());
        }
        Ok(start)
    }

    /// Route (c): the seeded initial model of the first version of `hex`'s
    /// line, then every round after it re-aggregated from its kept updates,
    /// carrying the downlink residual exactly as the live server did.
    pub(super) fn replay_line(
        &self,
        hex: &str,
        cache: &mut HashMap<String, ParamSet>,
    ) -> Result<ParamSet, StoreError> {
        let mut line = Vec::new();
        let mut at = Some(hex.to_string());
        while let Some(h) = at {
            let meta = self.meta(&h)?;
            at = meta
                .row
                .manifest
                .provenance
                .parent
                .as_ref()
                .map(version::hex);
            line.push((h, meta));
        }
        let (root_hex, root) = line.pop().ok_or_else(|| self.corrupt(hex, "empty line"))?;
        let mut params = root.spec.init_params();
        if !root
            .row
            .manifest
            .verifies(&params, &root.spec, &root.row.task)
        {
            return Err(self.corrupt(
                &root_hex,
                "the line's first version is not its spec's seeded initial model (imported?): route replay cannot start there",
            ));
        }
        cache.insert(root_hex, params.clone());
        let mut residual = ParamSet::zeros(&params.layout());
        for (h, meta) in line.into_iter().rev() {
            params = self.replay_step(&params, &meta, &mut residual)?;
            cache.insert(h, params.clone());
        }
        Ok(params)
    }

    /// Re-aggregates one round's kept updates on `parent` and publishes the
    /// result as the live round did.
    pub(super) fn replay_step(
        &self,
        parent: &ParamSet,
        meta: &VersionMeta,
        residual: &mut ParamSet,
    ) -> Result<ParamSet, StoreError> {
        let hex = version::hex(&meta.row.manifest.version);
        let err = |m: String| self.corrupt(&hex, m);
        let provenance = &meta.row.manifest.provenance;
        let (codec, downlink) = (provenance.codec, provenance.downlink_codec);
        let rule = Rule::of_strategy(&provenance.strategy).ok_or_else(|| {
            err(format!(
                "its aggregation strategy {:?} is not one this release knows",
                provenance.strategy
            ))
        })?;
        let mut stmt = self.conn.prepare(
            "SELECT body, scale, weight FROM kept_updates WHERE round = ?1 ORDER BY seq",
        )?;
        let updates = stmt
            .query_map([meta.row.round as i64], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, f64>(1)?,
                    r.get::<_, Option<f64>>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if updates.is_empty() {
            return Err(err(format!(
                "round {}'s client updates were not kept (turn on store.keep_updates)",
                meta.row.round
            )));
        }
        let heads = meta.spec.heads.len();
        let members = updates
            .iter()
            .map(|(body, scale, weight)| {
                let update = kept_header(body, heads).map_err(|e| err(e.to_string()))?;
                Ok(Member {
                    head: update.head as usize,
                    weight: weight.unwrap_or(update.samples as f64),
                    scale: *scale,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // a stateful server optimiser steps from the parent's state, on
        // the rule's aggregate taken at learning rate 1
        let opt = convoy_shared::strategy::server_opt_of(&provenance.strategy);
        let mut opt_state = match opt.is_stateful() {
            true => Some(self.parent_opt_state(&opt, parent, provenance, &err)?),
            false => None,
        };
        let aggregate_lr = if opt_state.is_some() {
            1.0
        } else {
            meta.row.server_lr
        };
        let target = robust::aggregate(
            &rule,
            &meta.spec,
            parent,
            aggregate_lr,
            &members,
            REPLAY_MEMORY_BYTES,
            |i, scratch| {
                decode_kept(&updates[i].0, &codec, heads, scratch)
                    .map(|_| ())
                    .map_err(|e| err(e.to_string()))
            },
        )?
        .ok_or_else(|| err("its kept updates carry no weight".into()))?
        .target;
        let target = match &mut opt_state {
            Some(state) => opt
                .step(parent, &target, state, meta.row.server_lr)
                .map_err(|e| err(e.to_string()))?,
            None => target,
        };
        if meta.row.clean {
            *residual = ParamSet::zeros(&parent.layout());
        }
        let published = publish::publish(
            parent,
            &target,
            residual,
            &downlink,
            meta.row.exact,
            meta.row.round,
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(published.params)
    }

    /// The server optimiser's state a replayed round started from: the one
    /// stored with its parent, or a fresh one when the parent is a first
    /// model.
    fn parent_opt_state(
        &self,
        opt: &ServerOpt,
        parent: &ParamSet,
        provenance: &convoy_shared::version::Provenance,
        err: &dyn Fn(String) -> StoreError,
    ) -> Result<OptState, StoreError> {
        let Some(parent_id) = provenance.parent else {
            return Ok(opt.init(parent));
        };
        let parent_hex = version::hex(&parent_id);
        // as the live server: a stored state of another optimiser (or
        // other hyper-parameters) starts afresh
        if let Some(bytes) = self.optimizer_state(&parent_hex)? {
            let state = OptState::from_bytes(&bytes)
                .map_err(|e| err(format!("its parent's optimiser state does not decode: {e}")))?;
            return Ok(if state.fits(opt, parent) {
                state
            } else {
                opt.init(parent)
            });
        }
        // a parent made without this optimiser (a first model, or another
        // strategy) left no state: the live round started afresh too
        let made_by = self.meta(&parent_hex)?.row.manifest.provenance;
        if made_by.parent.is_none()
            || convoy_shared::strategy::server_opt_of(&made_by.strategy) != *opt
        {
            return Ok(opt.init(parent));
        }
        Err(err(format!(
            "the {opt} state of its parent {} was not kept (turn on store.keep_updates)",
            version::short(&parent_id)
        )))
    }
}
