variable "region" {
  description = "AWS region"
  type        = string
  default     = "us-east-1"
}

variable "availability_zone" {
  description = "One AZ for every instance (with the placement group: lowest RTT between replicas)"
  type        = string
  default     = "us-east-1a"
}

variable "server_instance_type" {
  description = "FleetLM nodes: local NVMe matters (every append is fsync'd on a quorum)"
  type        = string
  default     = "i4i.xlarge"
}

variable "client_instance_type" {
  description = "The k6 client"
  type        = string
  default     = "c6i.2xlarge"
}

variable "server_count" {
  description = "Cluster size"
  type        = number
  default     = 3
}

variable "ssh_public_key" {
  description = "Public key for the admin user (e.g. the contents of ~/.ssh/id_ed25519.pub)"
  type        = string
}

variable "ssh_allowed_cidr" {
  description = "Who may SSH in (your address/32)"
  type        = string
  default     = "0.0.0.0/0"
}
