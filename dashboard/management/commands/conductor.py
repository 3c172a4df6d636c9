import signal

from django.core.management.base import BaseCommand

from dashboard.conductor import Conductor


class Command(BaseCommand):
    help = "Run the conductor loop: watches active crawls; finishes its tick on SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--max-ticks", type=int, default=None, help="stop after N ticks")

    def handle(self, *args, max_ticks=None, **options):
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        conductor = Conductor()
        self.stdout.write(f"conductor {conductor.name} started (tick {conductor.tick_seconds}s)")
        conductor.run(lambda: bool(stopping), max_ticks=max_ticks)
        self.stdout.write("conductor stopped")
