-- xmpp-gateway: component definitions for Prosody 0.12 (paste into prosody.cfg.lua).
--
-- In the global section, let components connect on loopback only:
--   component_ports = { 5347 }
--   component_interfaces = { "127.0.0.1" }
--
-- Then one block per component domain in the gateway's config ([[components]]).
-- The secret must equal that component's `secret` in the gateway config.
-- The integration tests use the block between the BEGIN and END markers.
--
-- Contacts in your users' rosters (XEP-0356, docs/servers.md): install Debian's
-- prosody-modules, add "privilege" to the global modules_enabled, and in the
-- section of the VirtualHost whose users the gateway serves:
--   privileged_entities = { ["sms.example.org"] = { roster = "set" } }
-- and in each such Component block:
--   modules_enabled = { "privilege" }

-- BEGIN COMPONENT
Component "sms.example.org"
  component_secret = "CHANGE-ME-component-secret"
-- END COMPONENT
