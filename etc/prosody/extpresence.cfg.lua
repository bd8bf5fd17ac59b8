-- extpresence on Prosody 0.12 (Debian bookworm: apt-get install prosody prosody-modules).
-- The integration tests build their Prosody config from this file (names replaced), so it is tested.
--
-- Global section: the component listener extpresence connects to (XEP-0114). Keep it on loopback
-- unless extpresence runs on another host.
component_ports = { 5347 }
component_interfaces = { "127.0.0.1" }

-- Your users' domain. "privilege" (mod_privilege, from prosody-modules) is added to the global
-- modules_enabled for this host; privileged_entities lets the component read rosters and see
-- users' presence (XEP-0356). roster = "both" also lets it write a user's roster item when it
-- requests a subscription in the user's name (the Agent API's SendPresenceSubscription; README
-- "Acting in a user's name"); "get" is enough for everything else.
VirtualHost "example.com"
    modules_enabled = { "privilege" }
    privileged_entities = {
        ["status.example.com"] = { roster = "both"; presence = "managed_entity" };
    }

-- The component extpresence logs in as: [xmpp] component in extpresence.toml.
Component "status.example.com"
    component_secret = "change-me"      -- [xmpp] secret in extpresence.toml
    validate_from_addresses = false     -- lets it send presence as alice@example.com/tigase-external
    modules_enabled = { "privilege" }   -- mod_privilege is needed on the component too
