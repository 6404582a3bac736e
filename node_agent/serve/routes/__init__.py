"""One router per resource; each is built for the app's generated request models."""
