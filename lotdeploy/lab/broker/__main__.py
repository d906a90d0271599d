"""`python -m lotdeploy.lab.broker ...`: the lab broker without the lotdeploy CLI."""

from lotdeploy.lab.broker.command import broker

if __name__ == "__main__":
    broker(prog_name="lotdeploy lab broker")
