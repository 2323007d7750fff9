# Packer: the build block of an EKS AMI template (amazon-ebs source
# "eks-al2023" defined elsewhere), with prewarm's steps last: pre-pull the
# images, plan the manifest with them, rebuild the initrd.

variable "images" {
  type        = list(string)
  description = "Image references to pre-pull and hydrate first at boot."
  default = [
    "public.ecr.aws/eks-distro/kubernetes/pause:3.9",
    "public.ecr.aws/docker/library/busybox:1.36",
  ]
}

build {
  sources = ["source.amazon-ebs.eks-al2023"]

  # ... the provisioners that install the node's software come first ...

  provisioner "shell" {
    execute_command = "sudo -S sh -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = [
      "IMAGES=${join(" ", var.images)}",
    ]
    inline = [
      "set -eu",
      "for ref in $IMAGES; do ctr -n k8s.io images pull \"$ref\"; done",
      "args=''; for ref in $IMAGES; do args=\"$args --image $ref\"; done",
      "prewarm plan --paths /etc/prewarm/boot.list --priority 50 $args -o /etc/prewarm/boot.manifest",
      "prewarm show /etc/prewarm/boot.manifest | head -n 20",
      "dracut -f",
    ]
  }
}
