"""The appliance: request handling, views, the miss path, operational endpoints."""
