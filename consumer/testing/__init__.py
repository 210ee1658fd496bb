"""Development tooling: the API emulator, the workload generator, a local Kafka, the demo.

The worker never imports this package. The emulator and the workload generator ship in
the wheel and the image (docker-compose runs them); the local Kafka launcher and the demo
need Java and a source checkout, so they are left out of both.
"""
