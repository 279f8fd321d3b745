"""What a sandbox may ask for: templates, memory/CPU tiers and disk size, checked like the service does.

Locally every template is the same image and sizes are not enforced, but a request the hosted
service would refuse is refused here too, with the same message.
"""

from __future__ import annotations

from prefect_opencomputer.local.errors import Invalid, NotFound

# The built-in public templates; locally they are all the same base image.
TEMPLATES = frozenset({"default", "base", "ubuntu", "python", "node"})
DEFAULT_TEMPLATE = "base"

# memoryMB -> vCPUs, smallest first.
TIERS: tuple[tuple[int, int], ...] = ((1024, 1), (4096, 1), (8192, 2), (16384, 4))
MAX_MEMORY_MB = 16384
MAX_CPU_COUNT = 4
DEFAULT_MEMORY_MB, DEFAULT_CPU_COUNT = 4096, 1

MIN_DISK_MB, MAX_DISK_MB = 20480, 262144


def resolve_template(template: str) -> str:
    if not template:
        return DEFAULT_TEMPLATE
    if template not in TEMPLATES:
        raise NotFound(f"template not found: {template}")
    return template


def resolve_tier(cpu_count: int, memory_mb: int) -> tuple[int, int]:
    """``(cpu_count, memory_mb)`` of the tier asked for; either may be 0 to infer it from the other."""
    if memory_mb == 0 and cpu_count == 0:
        return DEFAULT_CPU_COUNT, DEFAULT_MEMORY_MB
    if cpu_count == 0:
        return _tier_by("memoryMB", memory_mb, 0, f"{MAX_MEMORY_MB} MB")
    if memory_mb == 0:
        return _tier_by("cpuCount", cpu_count, 1, f"{MAX_CPU_COUNT} vCPU")
    if (memory_mb, cpu_count) in TIERS:
        return cpu_count, memory_mb
    raise Invalid(
        f"cpuCount {cpu_count} and memoryMB {memory_mb} do not match an allowed tier; valid "
        "combinations: 1/1024, 1/4096, 2/8192, 4/16384, 8/32768, 16/65536",
    )


def _tier_by(name: str, asked: int, position: int, largest: str) -> tuple[int, int]:
    """``(cpu_count, memory_mb)`` of the first tier whose ``position`` (0: memory, 1: vCPUs) is
    ``asked``, or the service's 400 for a value past the largest tier or between tiers."""
    values = sorted({tier[position] for tier in TIERS})
    if asked > values[-1]:
        raise Invalid(
            f"{name}={asked} exceeds the largest self-serve tier ({largest}). "
            "Contact us for enterprise sizing."
        )
    for tier_memory, tier_cpus in TIERS:
        if (tier_memory, tier_cpus)[position] == asked:
            return tier_cpus, tier_memory
    raise Invalid(f"{name} must be one of: {', '.join(map(str, values))} (got {asked})")


def resolve_disk(disk_mb: int) -> int:
    if disk_mb == 0:
        return MIN_DISK_MB
    if disk_mb < MIN_DISK_MB:
        raise Invalid(f"diskMB must be at least {MIN_DISK_MB} (20GB)")
    if disk_mb > MAX_DISK_MB:
        raise Invalid(f"diskMB cannot exceed {MAX_DISK_MB} (256GB)")
    return disk_mb


def clamp_fork_memory(requested_mb: int, checkpoint_mb: int) -> int:
    """A fork may grow its memory up to the largest tier, never below its checkpoint's."""
    if requested_mb <= 0:
        return checkpoint_mb
    return max(checkpoint_mb, min(requested_mb, MAX_MEMORY_MB))
