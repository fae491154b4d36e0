"""The lean HTTP/1.1 server shared by the appliance and steering: wire types,
the connection state machine, the accept loop, response heads and the
JSON-lines access log."""
