//! Operator apis: quotas (SetQuota, ListQuotas, DeleteQuota) and Stats.
//!
//! Quota changes write the quota file durably before they answer (see [`crate::flow::quota`]);
//! they block the shard for that write, as topic changes do. Stats reads what `/metrics` reads
//! and never waits for a shard.

use super::Req;
use crate::flow::quota::QuotaError;
use crate::protocol::{ErrorCode, QuotaEntity, QuotaLimits, Response};
use crate::server::response::Outgoing;
use crate::server::Shared;
use crate::storage::SegmentMap;

fn quota_error<M: SegmentMap>(req: Req, e: &QuotaError) -> Outgoing<M> {
    let code = match e {
        QuotaError::Invalid(_) => ErrorCode::InvalidConfig,
        QuotaError::Io { .. } | QuotaError::Corrupt { .. } => ErrorCode::Internal,
    };
    tracing::warn!(error = %e, "quota change refused");
    req.error(code, &e.to_string())
}

pub(super) fn set_quota<M: SegmentMap>(
    req: Req,
    shared: &Shared,
    entity: QuotaEntity,
    limits: QuotaLimits,
) -> Outgoing<M> {
    match shared.flow.quotas.set(entity.clone(), limits) {
        Ok(now) => {
            tracing::info!(%entity, limits = ?now, "quota set");
            req.ok(&Response::Done)
        }
        Err(e) => quota_error(req, &e),
    }
}

pub(super) fn list_quotas<M: SegmentMap>(req: Req, shared: &Shared) -> Outgoing<M> {
    req.ok(&Response::ListQuotas(shared.flow.quotas.list()))
}

pub(super) fn delete_quota<M: SegmentMap>(
    req: Req,
    shared: &Shared,
    entity: &QuotaEntity,
) -> Outgoing<M> {
    match shared.flow.quotas.delete(entity) {
        Ok(removed) => {
            if removed {
                tracing::info!(%entity, "quota deleted");
            }
            req.ok(&Response::DeleteQuota { removed })
        }
        Err(e) => quota_error(req, &e),
    }
}

pub(super) fn stats<M: SegmentMap>(req: Req, shared: &Shared) -> Outgoing<M> {
    req.ok(&Response::Stats(crate::server::metrics::stats_response(
        shared,
    )))
}
