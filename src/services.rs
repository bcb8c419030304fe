//! The service layer as one value: everything transports (MQTT, HTTP) need, built once by `app`
//! and shared by `Arc`. No transport type appears here.

use std::net::IpAddr;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::AuthService;
use crate::conditions::ConditionService;
use crate::config::Config;
use crate::data::DataService;
use crate::devices::attributes::AttributeService;
use crate::devices::credentials::CredentialService;
use crate::devices::provisioning::ProvisioningService;
use crate::devices::sessions::Sessions;
use crate::devices::{Presence, Registry};
use crate::events::EventBus;
use crate::integrations::{IntegrationService, Router};
use crate::jobs::JobService;
use crate::limits::{ConnectionCap, KeyedLimiter};
use crate::metrics::Metrics;
use crate::ota::{CampaignService, PackageService};
use crate::pki::Pki;
use crate::store::ports::{BackupStore, Ports};

pub struct Services {
    pub config: Config,
    /// Online backups of the store (`backups`).
    pub backup: Arc<dyn BackupStore>,
    pub pki: Arc<Pki>,
    pub registry: Arc<Registry>,
    pub credentials: Arc<CredentialService>,
    pub attributes: Arc<AttributeService>,
    pub jobs: Arc<JobService>,
    pub conditions: ConditionService,
    pub integrations: IntegrationService,
    pub provisioning: ProvisioningService,
    /// Firmware and software packages.
    pub packages: Arc<PackageService>,
    /// OTA campaigns and the per-device update state machine.
    pub campaigns: CampaignService,
    /// Dashboards of workspaces and fleets.
    pub dashboards: crate::dashboards::DashboardService,
    pub sessions: Arc<Sessions>,
    pub presence: Arc<Presence>,
    /// Telemetry messages per minute of each fleet over the last hour (the overview's
    /// sparklines), counted by the `message-rates` worker.
    pub message_rates: Arc<crate::devices::rates::MessageRates>,
    /// Each device's recent connection events and the unattributed refusals.
    pub trace: Arc<crate::devices::trace::ConnectionTrace>,
    pub data: DataService,
    pub auth: AuthService,
    pub audit: Arc<AuditLog>,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
    /// New connections per client address (all transports).
    pub connect_limiter: KeyedLimiter<IpAddr>,
    /// Messages per device over the HTTP device API (MQTT sessions keep their own bucket).
    pub http_device_limiter: KeyedLimiter<crate::model::DeviceId>,
    /// HTTP and HTTPS connections open at once, overall and per client address.
    pub http_connections: Arc<ConnectionCap<IpAddr>>,
    /// Device messages received and not yet answered (`limits.messages_in_flight`).
    pub in_flight: crate::limits::InFlight,
    /// Background work (the scheduler, retention, sweeps, backups), started by `App`.
    pub workers: Arc<crate::workers::Workers>,
}

impl Services {
    pub fn new(config: Config, ports: Ports, pki: Pki, metrics: Arc<Metrics>) -> Self {
        let presence = Arc::new(Presence::default());
        let router = Arc::new(Router::new(
            ports.registry.clone(),
            ports.jobs.clone(),
            ports.integrations.clone(),
        ));
        let tap = router.clone();
        let events = EventBus::with_tap(1024, Arc::new(move |e| tap.on_event(e)));
        let pki = Arc::new(pki);
        let sessions = Arc::new(Sessions::default());
        let audit = Arc::new(
            AuditLog::new(ports.operators.clone(), config.audit.max_entries)
                .with_metrics(metrics.clone()),
        );
        let registry = Arc::new(Registry::new(
            ports.registry.clone(),
            ports.identity.clone(),
            presence.clone(),
            sessions.clone(),
            audit.clone(),
        ));
        let credentials = Arc::new(CredentialService::new(
            ports.identity.clone(),
            pki.clone(),
            registry.clone(),
            sessions.clone(),
            audit.clone(),
            config.credentials.clone(),
        ));
        let provisioning = ProvisioningService::new(
            ports.identity.clone(),
            registry.clone(),
            credentials.clone(),
            audit.clone(),
        );
        let attributes = Arc::new(AttributeService::new(
            ports.attributes.clone(),
            registry.clone(),
            sessions.clone(),
            events.clone(),
        ));
        let jobs = Arc::new(JobService::new(
            &ports,
            registry.clone(),
            sessions.clone(),
            events.clone(),
            config.jobs.clone(),
        ));
        let packages = Arc::new(PackageService::new(
            ports.packages.clone(),
            ports.attributes.clone(),
            registry.clone(),
            audit.clone(),
            &config.data_dir,
            config.ota.max_package_mb << 20,
            crate::ota::manifest::Manifests::new(pki.clone(), &config.ota.manifest_keys),
        ));
        let campaigns = CampaignService::new(
            ports.campaigns.clone(),
            ports.telemetry.clone(),
            packages.clone(),
            attributes.clone(),
            jobs.clone(),
            registry.clone(),
            presence.clone(),
            events.clone(),
            audit.clone(),
            metrics.clone(),
            config.ota.clone(),
        );
        let dashboards =
            crate::dashboards::DashboardService::new(ports.dashboards.clone(), registry.clone());
        let conditions =
            ConditionService::new(ports.conditions.clone(), registry.clone(), events.clone());
        let l = &config.limits;
        let http_connections = ConnectionCap::new(
            config.http.max_connections as usize,
            config.http.max_connections_per_address as usize,
        );
        let workers = Arc::new(crate::workers::Workers::new(metrics.clone()));
        Self {
            http_connections,
            conditions,
            connect_limiter: KeyedLimiter::new(l.ip_connects_per_sec, l.ip_connect_burst),
            in_flight: crate::limits::InFlight::new(l.messages_in_flight),
            http_device_limiter: KeyedLimiter::new(
                l.device_messages_per_sec,
                l.device_message_burst,
            ),
            data: DataService::new(
                ports.telemetry.clone(),
                events.clone(),
                metrics.clone(),
                router.clone(),
                crate::data::keys::KeyGate::new(l),
            ),
            integrations: IntegrationService::new(
                ports.integrations.clone(),
                ports.registry.clone(),
                router,
                events.clone(),
                metrics.clone(),
                workers.clone(),
            ),
            workers,
            auth: AuthService::new(
                ports.operators.clone(),
                ports.registry.clone(),
                audit.clone(),
                config.auth.clone(),
            ),
            registry,
            credentials,
            attributes,
            jobs,
            provisioning,
            packages,
            campaigns,
            dashboards,
            sessions,
            audit,
            config,
            backup: ports.backup,
            pki,
            presence,
            message_rates: Arc::default(),
            trace: Arc::default(),
            events,
            metrics,
        }
    }
}
