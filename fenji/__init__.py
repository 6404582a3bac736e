"""The shells at the top: the ``fenji`` root command (``fenji.cli``), the demo, and the ServerApp that
``flwr run`` starts on the deployment engine. Shells compose the parties; nothing imports a shell."""
