// A Corral device on an ESP32 with the ThingsBoard Arduino library (0.15.x: ThingsBoard over
// TBPubSubClient, ArduinoJson 7), MQTT over TLS through WiFiClientSecure that trusts Corral's CA.
// It sends telemetry every few seconds, reports client attributes once, follows the shared
// attribute `interval` and answers the command `getStatus`. Not compiled in CI: see README.md.

#include <WiFi.h>
#include <WiFiClientSecure.h>

#include <Arduino_MQTT_Client.h>
#include <Server_Side_RPC.h>
#include <Shared_Attribute_Update.h>
#include <ThingsBoard.h>

// ---- fill these in ------------------------------------------------------------------------
constexpr char WIFI_SSID[] = "your-ssid";
constexpr char WIFI_PASSWORD[] = "your-wifi-password";
// A name or address that is in Corral's server certificate (`pki.hosts`): the TLS handshake
// checks it, so an address missing from the certificate fails even with the right CA.
constexpr char CORRAL_HOST[] = "corral.lan";
constexpr uint16_t CORRAL_MQTT_TLS_PORT = 8883U;
// `corral device create esp32-1 --fleet FLEET` prints it once.
constexpr char DEVICE_TOKEN[] = "device-access-token";
// `corral ca show` (or GET /api/v1/ca.pem on Corral's HTTP port): Corral's own CA, not a public
// one, so the device trusts exactly the server it was set up for.
constexpr char CORRAL_CA_PEM[] = R"(-----BEGIN CERTIFICATE-----
paste Corral's CA here
-----END CERTIFICATE-----
)";
// --------------------------------------------------------------------------------------------

constexpr char FIRMWARE_VERSION[] = "1.0.0";
constexpr char INTERVAL_KEY[] = "interval";
constexpr char STATUS_METHOD[] = "getStatus";

// MQTT buffers. Corral accepts packets up to 64 KiB; these messages are far smaller.
constexpr uint16_t MAX_MESSAGE_RECEIVE_SIZE = 512U;
constexpr uint16_t MAX_MESSAGE_SEND_SIZE = 512U;
constexpr size_t MAX_RPC_SUBSCRIPTIONS = 1U;
constexpr size_t MAX_RPC_RESPONSE = 4U;  // key-value pairs in a reply
constexpr size_t MAX_SHARED_SUBSCRIPTIONS = 1U;
constexpr size_t MAX_ATTRIBUTES = 1U;

WiFiClientSecure tlsClient;
Arduino_MQTT_Client mqttClient(tlsClient);
Server_Side_RPC<MAX_RPC_SUBSCRIPTIONS, MAX_RPC_RESPONSE> rpc;
Shared_Attribute_Update<MAX_SHARED_SUBSCRIPTIONS, MAX_ATTRIBUTES> sharedUpdate;
const std::array<IAPI_Implementation *, 2U> apis = {&rpc, &sharedUpdate};
ThingsBoard tb(mqttClient, MAX_MESSAGE_RECEIVE_SIZE, MAX_MESSAGE_SEND_SIZE,
               Default_Max_Stack_Size, apis);

uint32_t sendIntervalMs = 10000U;  // replaced by the shared attribute `interval` (seconds)
uint32_t lastSendMs = 0U;
bool subscribed = false;
bool attributesSent = false;

// Called from tb.loop() when Corral pushes a change of `interval`
// (corral attributes set esp32-1 interval=30).
void onSharedAttributes(const JsonObjectConst &data) {
  if (data[INTERVAL_KEY].is<uint32_t>()) {
    const uint32_t seconds = data[INTERVAL_KEY].as<uint32_t>();
    if (seconds > 0U) {
      sendIntervalMs = seconds * 1000U;
      Serial.printf("interval now %u s\n", seconds);
      // Say which setting is in force, so the operator sees it took effect.
      tb.sendAttributeData("interval_applied", static_cast<int>(seconds));
    }
  }
}

// Called from tb.loop() for the command `getStatus`
// (corral job send esp32-1 getStatus --two-way --wait 30). The response becomes the job's result.
void onGetStatus(const JsonVariantConst &params, JsonDocument &response) {
  response["uptime_s"] = millis() / 1000U;
  response["rssi"] = static_cast<int>(WiFi.RSSI());
  response["firmware_version"] = FIRMWARE_VERSION;
}

const std::array<const char *, MAX_ATTRIBUTES> SHARED_KEYS = {INTERVAL_KEY};
const Shared_Attribute_Callback<MAX_ATTRIBUTES> sharedCallback(&onSharedAttributes,
                                                               SHARED_KEYS.cbegin(),
                                                               SHARED_KEYS.cend());
const std::array<RPC_Callback, MAX_RPC_SUBSCRIPTIONS> rpcCallbacks = {
    RPC_Callback{STATUS_METHOD, onGetStatus},
};

void connectWiFi() {
  if (WiFi.status() == WL_CONNECTED) {
    return;
  }
  Serial.print("WiFi ");
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) {
    delay(500);
    Serial.print('.');
  }
  Serial.println(" connected");
}

void setup() {
  Serial.begin(115200);
  tlsClient.setCACert(CORRAL_CA_PEM);
  connectWiFi();
}

void loop() {
  connectWiFi();
  if (!tb.connected()) {
    subscribed = false;
    Serial.printf("connecting to %s:%u\n", CORRAL_HOST, CORRAL_MQTT_TLS_PORT);
    // The token is the MQTT username; Corral refuses a wrong one with CONNACK 0x86 / 4.
    if (!tb.connect(CORRAL_HOST, DEVICE_TOKEN, CORRAL_MQTT_TLS_PORT)) {
      Serial.println("connect failed; retrying in 5 s");
      delay(5000);
      return;
    }
  }
  if (!subscribed) {
    // Subscribed again after every reconnect: the session is clean. Commands queued while the
    // device was away arrive as soon as this subscription is in place.
    subscribed = rpc.RPC_Subscribe(rpcCallbacks.cbegin(), rpcCallbacks.cend()) &&
                 sharedUpdate.Shared_Attributes_Subscribe(sharedCallback);
    if (!subscribed) {
      Serial.println("subscribe failed");
    }
  }
  if (!attributesSent) {
    attributesSent = tb.sendAttributeData("firmware_version", FIRMWARE_VERSION);
  }
  if (millis() - lastSendMs >= sendIntervalMs) {
    lastSendMs = millis();
    // A stand-in for a real sensor: the chip's own temperature.
    tb.sendTelemetryData("temperature", temperatureRead());
    tb.sendTelemetryData("rssi", static_cast<int>(WiFi.RSSI()));
  }
  tb.loop();
}
