"""Planning runs at scale: ahead-of-time compile checks for Cloud TPU topologies."""
