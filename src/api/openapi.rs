//! The OpenAPI document the server serves at `/api/v1/openapi.json`: its header (title,
//! servers, the bearer scheme, tags), the public operations outside the authenticated router
//! (`ca.pem`, `crl.pem`), and the conventions every operation follows, applied here once
//! rather than repeated in each handler's annotation: the error responses any operation can
//! give (401 and 403 on authenticated routes, 400 on parameters, 413/415 on bodies, 507 and 500)
//! and `format: uuid` on path ids.

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, RefOr, Response, ResponseBuilder};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Corral REST API",
        description = "Manage workspaces, fleets and devices, their credentials, attributes, jobs \
            and conditions, and read device data.\n\n\
            **Authentication.** Operators send `Authorization: Bearer <api key>` (an API key \
            of a user, or the bootstrap key printed at the first start); the web UI signs in \
            with `POST /auth/login` and a session cookie. Operations marked with no security \
            are public: the device API, authenticated by the device's access token in the \
            path, provisioning, authenticated by the fleet's key and secret in the body, and \
            the CA certificate and revocation list.\n\n\
            **Errors.** Every error of the management API has the body \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; the `code` is stable \
            (for example `not_found`, `name_taken`, `invalid_id`, `invalid_body`, \
            `insufficient_storage`) and the message is for people. The device API answers as \
            ThingsBoard does, with `{\"error\": \"...\"}`.\n\n\
            **Ids, times, pages.** Ids are UUIDs; times are milliseconds since the Unix epoch; \
            listings return `items` and a `next_cursor` to pass as `cursor` for the next page.",
    ),
    servers((url = "/api/v1")),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    paths(ca_pem, crl_pem, ota_keys, provision),
    components(schemas(super::telemetry::Order, crate::api::error::ErrorBody)),
    tags(
        (name = "workspaces", description = "Workspaces: the top-level groups of fleets, each with its own retention."),
        (name = "fleets", description = "Fleets: groups of devices of one kind inside a workspace."),
        (name = "devices", description = "Devices: create, rename, disable and delete them, and see their connections."),
        (name = "credentials", description = "Device credentials: access tokens, MQTT basic credentials and X.509 certificates."),
        (name = "provisioning", description = "Fleet provisioning keys, fleet CAs and device self-provisioning."),
        (name = "attributes", description = "Client, shared and server attributes of devices and fleets."),
        (name = "telemetry", description = "Time series: raw points, latest values, aggregates, tags and export."),
        (name = "jobs", description = "Commands to devices, fleet rollouts and schedules."),
        (name = "ota", description = "Firmware and software packages for over-the-air updates, and campaigns that roll them out."),
        (name = "conditions", description = "Device-reported conditions (alarms): list, acknowledge, close."),
        (name = "dashboards", description = "Dashboards of a workspace or a fleet: charts, values, gauges, tables, conditions and maps of its devices."),
        (name = "events", description = "Connection and lifecycle events."),
        (name = "integrations", description = "Webhooks fed from durable per-integration queues."),
        (name = "users", description = "Users, their grants and their API keys."),
        (name = "auth", description = "Signing in and out of the web UI, and the first-user setup."),
        (name = "audit", description = "The audit log of security-relevant actions."),
        (name = "overview", description = "Server-wide counts and the store's usage."),
        (name = "backup", description = "Online backups of the whole store."),
        (name = "server", description = "The server's background workers and their state."),
        (name = "device-api", description = "ThingsBoard's HTTP device API: a device authenticated by its access token in the path."),
        (name = "pki", description = "Corral's device CA certificate and its revocation list."),
    ),
)]
pub(super) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`crl_...`): a user's, or the bootstrap key printed at the first start.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The device CA certificate
///
/// The PEM certificate of the CA that signs device and server certificates: devices and
/// MQTT clients trust it to verify the server, and X.509 devices present certificates it
/// issued. Public, so that a device can fetch it before it has any credential.
#[utoipa::path(get, path = "/ca.pem", tag = "pki", security(()),
    responses((status = 200, description = "The CA certificate", content_type = "application/x-pem-file", body = String)))]
#[allow(dead_code)] // Documents the route `super::ca_pem` serves; never called.
fn ca_pem() {}

/// The certificate revocation list
///
/// The CA's current CRL in PEM form: the serial numbers of revoked device certificates,
/// signed by the CA. Public, like the certificate.
#[utoipa::path(get, path = "/crl.pem", tag = "pki", security(()),
    responses((status = 200, description = "The revocation list", content_type = "application/pkix-crl", body = String)))]
#[allow(dead_code)] // Documents the route `super::crl_pem` serves; never called.
fn crl_pem() {}

/// The keys OTA manifests are signed with
///
/// The ed25519 public keys whose signatures on package manifests this server accepts: its own
/// (`source: server`, generated at first start) and offline signers' from `[ota]
/// manifest_keys` (`source: offline`). A device pins one (by `kid`, the first 16 hex digits of
/// the SHA-256 of the raw key) and checks `fw_signature` over the exact bytes of `fw_manifest`
/// with it. Public, like the CA certificate.
#[utoipa::path(get, path = "/ota/keys", tag = "ota", security(()),
    responses((status = 200, description = "The manifest signing keys", body = Vec<crate::ota::manifest::ManifestKeyView>)))]
#[allow(dead_code)] // Documents the route `super::ota_keys` serves; never called.
fn ota_keys() {}

/// Provision a device (ThingsBoard device provisioning)
///
/// A device without credentials asks to be created in the fleet whose provisioning key and
/// secret it carries (`provisionDeviceKey`, `provisionDeviceSecret`), under `deviceName`, and
/// gets its credentials: `{"status": "SUCCESS", "credentialsType", "credentialsValue"}`. A
/// refusal is also a 200, `{"status": "FAILURE", "errorMsg"}`, because ThingsBoard's SDKs read
/// the body only on success statuses. Requests are rate-limited per address.
#[utoipa::path(post, path = "/provision", tag = "device-api", security(()),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "`deviceName`, `provisionDeviceKey`, `provisionDeviceSecret`, and optionally `credentialsType` (`ACCESS_TOKEN`, `MQTT_BASIC`, `X509_CERTIFICATE`) with `token`, `clientId`, `username`, `password` or `hash`."),
    responses(
        (status = 200, description = "`SUCCESS` with the credentials, or `FAILURE` with `errorMsg`.", body = Object),
        (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = Object),
        (status = 429, description = "Too many provisioning requests from this address.", body = Object),
    ))]
#[allow(dead_code)] // Documents the route `credentials::provision` serves; never called.
fn provision() {}

/// Applies the conventions every operation follows (see the module header). An operation's
/// own declaration of a status wins over the generic one.
pub(super) fn apply_conventions(doc: &mut utoipa::openapi::OpenApi) {
    if let Some(c) = doc.components.as_mut() {
        for s in c.schemas.values_mut() {
            unsigned_ranges(s);
        }
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (op, mutating) in ops {
            let Some(op) = op else { continue };
            default_descriptions(op);
            let device_api = op
                .tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == "device-api"));
            uuid_path_ids(op);
            page_limits(op);
            for p in op.parameters.iter_mut().flatten() {
                if let Some(s) = p.schema.as_mut() {
                    unsigned_ranges(s);
                }
            }
            if !device_api {
                error_responses(op, mutating);
            }
        }
    }
}

/// Responses a handler declares without words get the usual meaning of their status.
fn default_descriptions(op: &mut Operation) {
    for (status, r) in op.responses.responses.iter_mut() {
        let RefOr::T(r) = r else { continue };
        if !r.description.is_empty() {
            continue;
        }
        r.description = match status.as_str() {
            "200" => "Success.",
            "201" => "Created.",
            "202" => "Accepted; the work goes on in the background.",
            "204" => "Done; no body.",
            "400" => "A malformed request (`invalid_id`, `invalid_query`, `invalid_body`, ...).",
            "401" => "Not signed in: no valid API key or session (`unauthorized`).",
            "403" => "The caller's role does not allow this (`forbidden`).",
            "404" => "Not found, or not visible to the caller (`not_found`).",
            "409" => "In conflict with what exists (`name_taken`, `not_empty`, `conflict`, ...).",
            "422" => "A field is out of its range or names nothing usable (`invalid_field`).",
            "429" => "Too many requests; `Retry-After` says when to try again.",
            _ => "See the status code.",
        }
        .to_string();
    }
}

/// Path parameters named `id` or `*_id` and typed as a bare string are UUIDs: every object id
/// of the API is one, and a non-UUID gets 400 `invalid_id`.
fn uuid_path_ids(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if p.parameter_in != ParameterIn::Path || !(p.name == "id" || p.name.ends_with("_id")) {
            continue;
        }
        let bare_string = match &p.schema {
            Some(RefOr::T(Schema::Object(o))) => {
                o.schema_type == Type::String.into() && o.format.is_none()
            }
            _ => false,
        };
        if bare_string {
            p.schema = Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .build(),
            )));
        }
    }
}

/// utoipa types `u32` and `u64` as `int32` and `int64` with `minimum: 0`, which are narrower
/// than what the server takes (a `u32` of 3,000,000,000 is fine): the format goes, and the
/// unsigned maximum is stated instead. Fields with their own maximum keep it.
fn unsigned_ranges(s: &mut RefOr<Schema>) {
    let RefOr::T(schema) = s else { return };
    match schema {
        Schema::Object(o) => {
            let unsigned = o.schema_type == Type::Integer.into()
                || o.schema_type
                    == utoipa::openapi::schema::SchemaType::from_iter([Type::Integer, Type::Null]);
            if unsigned
                && o.minimum.as_ref().is_some_and(|m| {
                    serde_json::to_value(m).ok().and_then(|v| v.as_f64()) == Some(0.0)
                })
                && o.maximum.is_none()
            {
                let max = match &o.format {
                    Some(SchemaFormat::KnownFormat(KnownFormat::Int32)) => Some(u32::MAX as u64),
                    Some(SchemaFormat::KnownFormat(KnownFormat::Int64)) => Some(u64::MAX),
                    _ => None,
                };
                if let Some(max) = max {
                    o.format = None;
                    o.maximum = Some(max.into());
                }
            }
            for p in o.properties.values_mut() {
                unsigned_ranges(p);
            }
        }
        Schema::Array(a) => {
            if let utoipa::openapi::schema::ArrayItems::RefOrSchema(items) = &mut a.items {
                unsigned_ranges(items);
            }
        }
        Schema::OneOf(x) => {
            closed_variants(x);
            x.items.iter_mut().for_each(unsigned_ranges)
        }
        Schema::AllOf(x) => x.items.iter_mut().for_each(unsigned_ranges),
        Schema::AnyOf(x) => x.items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

/// An externally tagged enum (`{"variant": {...}}`) is a `oneOf` of objects with one required
/// property each; serde takes exactly one key, so each variant object is closed.
fn closed_variants(x: &mut utoipa::openapi::schema::OneOf) {
    let tagged = |s: &RefOr<Schema>| match s {
        RefOr::T(Schema::Object(o)) => o.properties.len() == 1 && o.required.len() == 1,
        _ => false,
    };
    if x.items.len() < 2 || !x.items.iter().all(tagged) {
        return;
    }
    let closed = || {
        Some(Box::new(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ))
    };
    for s in &mut x.items {
        if let RefOr::T(Schema::Object(o)) = s {
            o.additional_properties = closed();
            // A struct variant's fields, inline: serde refuses unknown ones there too (its
            // enums derive `deny_unknown_fields`).
            for p in o.properties.values_mut() {
                if let RefOr::T(Schema::Object(inner)) = p
                    && !inner.properties.is_empty()
                {
                    inner.additional_properties = closed();
                }
            }
        }
    }
}

/// A query parameter `limit` is a page size: 1 to `MAX_PAGE` (see `page_limit`).
fn page_limits(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if p.parameter_in != ParameterIn::Query || p.name != "limit" {
            continue;
        }
        if let Some(RefOr::T(Schema::Object(o))) = &mut p.schema
            && o.maximum.is_none()
        {
            o.minimum = Some(1.into());
            o.maximum = Some((super::MAX_PAGE as u64).into());
        }
    }
}

fn error_responses(op: &mut Operation, mutating: bool) {
    // A public operation declares `security(())`: one requirement with no scheme.
    let authenticated = op.security.as_ref().is_none_or(|reqs| {
        !reqs
            .iter()
            .any(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
    });
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let body = op.request_body.as_ref().map(is_json_body);
    if body == Some(true) {
        // Bodies name other objects (a fleet, a workspace, a device): one that does not exist,
        // or that the caller cannot see, is 404.
        op.responses
            .responses
            .entry("404".to_string())
            .or_insert_with(|| RefOr::T(error("An object the request names does not exist, or the caller cannot see it (`not_found`).")));
    }
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, text: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error(text)));
    };
    if authenticated {
        add(
            "401",
            "Not signed in: no valid API key or session (`unauthorized`).",
        );
        add(
            "403",
            "The caller's role does not allow this, or a browser session sent no CSRF token (`forbidden`).",
        );
    }
    if has_params || body.is_some() {
        add(
            "400",
            "A malformed request: a path id that is not a UUID (`invalid_id`), a bad query \
             parameter (`invalid_query`, `invalid_limit`, `invalid_cursor`), or a body that is not \
             the JSON this operation takes (`invalid_body`).",
        );
    }
    if let Some(json) = body {
        add(
            "413",
            "The body is over the API's size limit (`payload_too_large`).",
        );
        if json {
            add(
                "422",
                "A field is out of its range or names nothing usable (`invalid_field`).",
            );
            add(
                "415",
                "The body was not sent as `Content-Type: application/json` (`unsupported_media_type`).",
            );
        }
    }
    if mutating {
        add(
            "507",
            "Free disk space is below the store's reserve: nothing was changed; try again when \
             space is freed (`insufficient_storage`).",
        );
    }
    add(
        "500",
        "An internal error; the message carries an error id that is also in the server log (`internal`).",
    );
}

fn is_json_body(b: &RequestBody) -> bool {
    b.content.keys().any(|k| k.starts_with("application/json"))
}

fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorBody",
            )))),
        )
        .build()
}
