//! Timed probes: tcp, http and websocket, each on its own connection.
