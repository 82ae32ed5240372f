"""Per-team identities on the cluster: a service account and an S3 policy for each team.

Each team's pipelines keep their data under a prefix of their own, ``<prefix>/teams/<team>/``
(its ``TAMIS_DATA_ROOT``), which only the team may read and write; public releases are written
once, under ``<prefix>/public/<team>/``, which every team may read and only their team write.
For each team this renders:

* ``<team>.yaml``: the ServiceAccount ``tamis-team-<team>`` that the team's pods run as
  (``execution.kubernetes.service_account``), tied to the cloud role that holds the policy
  (``eks.amazonaws.com/role-arn``), and the ConfigMap ``tamis-team-<team>-storage`` with its
  storage root (``execution.kubernetes.config_maps``);
* ``<team>.s3-policy.json``: the IAM policy of that role;
* ``kustomization.yaml`` listing the teams' manifests (``kubectl apply -k k8s/teams/``).

``python -m tamis_airflow.teams render --team data --team research`` writes them to k8s/teams/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tamis.execution import check_dns_label

K8S_TEAMS = Path(__file__).resolve().parents[2] / "k8s" / "teams"
NAMESPACE = "tamis"
BUCKET = "tamis-corpus"
PREFIX = "tamis"
REGION = "eu-west-1"
# The AWS documentation's example account: replace with yours when rendering for a cluster.
ROLE_ARN_PREFIX = "arn:aws:iam::111122223333:role/"


def service_account_name(team: str) -> str:
    return check_dns_label(f"tamis-team-{team}")


def storage_root(team: str, bucket: str = BUCKET, prefix: str = PREFIX) -> str:
    return f"s3://{bucket}/{prefix}/teams/{team}"


def team_manifests(
    team: str,
    namespace: str = NAMESPACE,
    bucket: str = BUCKET,
    prefix: str = PREFIX,
    region: str = REGION,
    role_arn_prefix: str = ROLE_ARN_PREFIX,
) -> list[dict[str, Any]]:
    name = service_account_name(team)
    labels = {"app.kubernetes.io/name": "tamis", "tamis/team": team}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {"eks.amazonaws.com/role-arn": f"{role_arn_prefix}{name}"},
            },
            # Stage pods need no Kubernetes API; the cloud role's token is projected apart.
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-storage", "namespace": namespace, "labels": labels},
            "data": {
                "TAMIS_DATA_ROOT": storage_root(team, bucket, prefix),
                "TAMIS_TEAM": team,
                "TAMIS_PUBLIC_ROOT": f"s3://{bucket}/{prefix}/public/{team}",
                "AWS_DEFAULT_REGION": region,
            },
        },
    ]


def s3_policy(team: str, bucket: str = BUCKET, prefix: str = PREFIX) -> dict[str, Any]:
    """Read and write the team's prefix, read every team's public releases, write only its own."""
    own, public, published = f"{prefix}/teams/{team}", f"{prefix}/public", f"{prefix}/public/{team}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListOwnAndPublic",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [own, f"{own}/*", public, f"{public}/*"]}},
            },
            {
                "Sid": "ReadWriteOwn",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": f"arn:aws:s3:::{bucket}/{own}/*",
            },
            {
                "Sid": "ReadPublic",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/{public}/*",
            },
            {
                "Sid": "PublishOwn",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": f"arn:aws:s3:::{bucket}/{published}/*",
            },
        ],
    }


def render(teams: list[str], out: Path = K8S_TEAMS, **options: str) -> list[Path]:
    """Write every team's manifests and policy, and the kustomization listing them."""
    out.mkdir(parents=True, exist_ok=True)
    policy_options = {k: v for k, v in options.items() if k in ("bucket", "prefix")}
    written = []
    for team in sorted(set(teams)):
        service_account_name(team)  # a team name that cannot name Kubernetes objects is refused
        manifest = out / f"{team}.yaml"
        manifest.write_text(
            f"# Rendered by `python -m tamis_airflow.teams render`; team {team}.\n"
            + yaml.safe_dump_all(team_manifests(team, **options), sort_keys=False)
        )
        policy = out / f"{team}.s3-policy.json"
        policy.write_text(json.dumps(s3_policy(team, **policy_options), indent=2) + "\n")
        written += [manifest, policy]
    kustomization = out / "kustomization.yaml"
    kustomization.write_text(
        "# kubectl apply -k k8s/teams/   (each <team>.s3-policy.json goes to the role named in the\n"
        "# team's service account: aws iam put-role-policy --policy-document file://...)\n"
        + yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{t}.yaml" for t in sorted(set(teams))],
            },
            sort_keys=False,
        )
    )
    return [*written, kustomization]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tamis_airflow.teams")
    sub = parser.add_subparsers(required=True, dest="command")
    run = sub.add_parser("render", help="write each team's service account, storage ConfigMap and S3 policy")
    run.add_argument("--team", action="append", required=True, help="a team (repeat for each)")
    run.add_argument("--out", type=Path, default=K8S_TEAMS)
    run.add_argument("--namespace", default=NAMESPACE)
    run.add_argument("--bucket", default=BUCKET)
    run.add_argument("--prefix", default=PREFIX)
    run.add_argument("--region", default=REGION)
    run.add_argument("--role-arn-prefix", default=ROLE_ARN_PREFIX)
    args = parser.parse_args(argv)
    try:
        paths = render(
            args.team,
            args.out,
            namespace=args.namespace,
            bucket=args.bucket,
            prefix=args.prefix,
            region=args.region,
            role_arn_prefix=args.role_arn_prefix,
        )
    except ValueError as exc:
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
