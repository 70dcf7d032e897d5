//! Operator requests: quotas and the broker's statistics (`levee quota`, `levee stats`).

use super::{unexpected, Client, ClientError};
use crate::protocol::{ApiKey, QuotaEntity, QuotaLimits, Request, Response, StatsResponse};

impl Client {
    /// Sets the rates `limits` gives on `entity` (rates it leaves `None` stay as they were),
    /// durably, on every shard at once. A rate must be at least 1 per second.
    pub fn set_quota(&self, entity: &QuotaEntity, limits: &QuotaLimits) -> Result<(), ClientError> {
        let request = Request::SetQuota {
            entity: entity.clone(),
            limits: *limits,
        };
        self.admin(&request, ApiKey::SetQuota).map(drop)
    }

    /// Every quota the broker enforces.
    pub fn list_quotas(&self) -> Result<Vec<(QuotaEntity, QuotaLimits)>, ClientError> {
        self.retrying(
            || match self.admin(&Request::ListQuotas, ApiKey::ListQuotas)? {
                Response::ListQuotas(all) => Ok(all),
                other => Err(unexpected(ApiKey::ListQuotas, &other)),
            },
        )
    }

    /// Lifts every limit on `entity`; false when it had none.
    pub fn delete_quota(&self, entity: &QuotaEntity) -> Result<bool, ClientError> {
        let request = Request::DeleteQuota {
            entity: entity.clone(),
        };
        match self.admin(&request, ApiKey::DeleteQuota)? {
            Response::DeleteQuota { removed } => Ok(removed),
            other => Err(unexpected(ApiKey::DeleteQuota, &other)),
        }
    }

    /// The broker's counters by shard, its partitions' offsets and sizes, every group's lag, and
    /// its memory budget.
    pub fn stats(&self) -> Result<StatsResponse, ClientError> {
        self.retrying(|| match self.admin(&Request::Stats, ApiKey::Stats)? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(ApiKey::Stats, &other)),
        })
    }
}
